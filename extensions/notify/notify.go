// Package notify receives events published with PostgreSQL NOTIFY: a
// Listener holds one dedicated connection LISTENing on a channel, parses
// each payload as a JSON object naming a topic, an event and data, and
// hands valid ones to a Handler.
//
// Notifications sent while the connection is down are lost (LISTEN state
// belongs to the session): after a reconnect the Listener calls
// OnReconnect, and the caller resyncs.
//
// With Config.LeaderLock set, several Listeners on one channel (one per
// instance of a cluster) elect a leader: each session polls
// pg_try_advisory_lock on its own connection and LISTENs only once it holds
// the lock, so exactly one of them receives each notification. The lock is
// session-scoped and lives on the LISTEN connection itself: when the
// leader's process dies or its connection drops, PostgreSQL frees the lock
// and a follower takes over within one LeaderPoll (a lock taken through a
// pool would stay with whatever pooled connection ran it).
//
// A Listener runs one goroutine, started by Start and stopped by Close;
// every callback runs on it, in order.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// MaxPayload is the largest payload parsed, in bytes. PostgreSQL refuses
// payloads of 8000 bytes and more by default; a larger one means a server
// built otherwise, and is dropped unparsed.
const MaxPayload = 8000

// Defaults of Config.
const (
	DefaultTopicField     = "topic"
	DefaultEventField     = "event"
	DefaultDataField      = "data"
	DefaultReconnectDelay = time.Second
	DefaultLeaderPoll     = 2 * time.Second

	// DefaultApplicationName is the application_name of the LISTEN
	// connection unless the connection string sets one: it finds the
	// connection in pg_stat_activity.
	DefaultApplicationName = "caddy-realtime notify"
)

// Reasons a notification is dropped, as passed to Config.OnDrop.
const (
	ReasonInvalid     = "invalid"      // not a JSON object with a valid topic and event
	ReasonSystemTopic = "system_topic" // a topic of the gateway's own "__" namespace
	ReasonTooLarge    = "too_large"    // MaxPayload bytes or more
)

// State is where a Listener's session is.
type State string

// States of a Listener.
const (
	StateConnecting State = "connecting" // dialing, or waiting to redial after a failure
	StateStandby    State = "standby"    // connected, polling for the leader lock (leader mode)
	StateListening  State = "listening"  // LISTENing: notifications are delivered
	StateClosed     State = "closed"
)

// LockID returns the advisory lock id used for leader election on a
// channel: the FNV-1a 64-bit hash of "caddy-realtime:notify:" + channel,
// never 0. Every instance derives the same id from the same channel, so no
// id needs configuring; the prefix keeps it away from ids an application
// picks by hand.
func LockID(channel string) int64 {
	h := fnv.New64a()
	h.Write([]byte("caddy-realtime:notify:" + channel))
	id := int64(h.Sum64())
	if id == 0 {
		id = 1
	}
	return id
}

// pingInterval is how long a wait for a notification lasts before the
// Listener checks the connection with SELECT 1: pgx's dialer sets no TCP
// keepalive of its own, so a half-open connection would otherwise go
// unnoticed for minutes.
const pingInterval = 30 * time.Second

// pingTimeout bounds that check and the LISTEN statement.
const pingTimeout = 5 * time.Second

// Notification is one valid payload.
type Notification struct {
	Topic string
	Event string
	Data  json.RawMessage // the payload's bytes for the data field; "null" when missing
}

// Config configures a Listener.
type Config struct {
	// ConnString is the pgx connection string of the dedicated LISTEN
	// connection. It may hold a password: the Listener never logs or
	// returns it in errors of its own. Required.
	ConnString string

	// Channel is the channel to LISTEN on: a plain identifier (letters,
	// digits and '_', not starting with a digit, up to 63 bytes), used as
	// written (quoted, so case matters). Required.
	Channel string

	// TopicField, EventField and DataField name the payload's members
	// holding the topic, the event and the data. Defaults: "topic",
	// "event", "data".
	TopicField, EventField, DataField string

	// Handler receives each valid notification, in order, on the
	// Listener's goroutine. While it runs, later notifications wait in
	// PostgreSQL's queue, so it must return promptly: a call bounded by a
	// deadline (a store append) is fine, an unbounded wait is not. Required.
	Handler func(Notification)

	// OnDrop, if set, is called with a Reason* constant for each
	// notification dropped unparsed or invalid. It must not block.
	OnDrop func(reason string)

	// OnError, if set, receives every connection error before the
	// Listener reconnects. It runs on the Listener's goroutine.
	OnError func(error)

	// OnListen, if set, is called after each LISTEN succeeds, the first
	// included, before OnLeader and OnReconnect: the Listener receives
	// from then on (a caller logs recovery here).
	OnListen func()

	// OnReconnect, if set, is called after each successful reconnect
	// (not after the first connect): notifications sent while the
	// connection was down are lost, so the caller resyncs.
	OnReconnect func()

	// AllowNonASCIITopics accepts the topics wire.ValidTopic accepts with
	// allowNonASCII; it must match the gateway's setting. Default: false.
	AllowNonASCIITopics bool

	// ReconnectDelay is the pause between a failure and the next
	// connection attempt. Default: DefaultReconnectDelay.
	ReconnectDelay time.Duration

	// LeaderLock, if not 0, is the advisory lock id of leader election
	// (LockID gives one per channel): the Listener LISTENs only while its
	// connection holds the lock, so among Listeners sharing the id exactly
	// one receives. 0 LISTENs unconditionally. Default: 0.
	LeaderLock int64

	// LeaderPoll is how often a follower tries the lock: the longest a
	// channel goes unheard after its leader dies. Default: DefaultLeaderPoll.
	LeaderPoll time.Duration

	// OnLeader, if set, is called with true when this Listener takes the
	// lock and LISTENs, and with false when it loses the lock (its
	// connection failed, or Close). Notifications sent between the old
	// leader's end and the new one's LISTEN are lost: the caller resyncs
	// on true. Only called when LeaderLock is set.
	OnLeader func(leader bool)
}

var channelRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// ValidChannel reports whether name is a channel NewListener accepts: an
// identifier of letters, digits and '_', up to 63 bytes, not starting
// with a digit, which LISTEN takes without quoting.
func ValidChannel(name string) bool { return channelRE.MatchString(name) }

// Listener receives the notifications of one channel. Start starts it;
// Close stops it.
type Listener struct {
	cfg     Config
	connCfg *pgx.ConnConfig
	listen  string // the LISTEN statement

	invalid atomic.Uint64
	state   atomic.Value // State

	startOnce sync.Once
	closeOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewListener validates cfg and returns a Listener that is not started.
func NewListener(cfg Config) (*Listener, error) {
	if cfg.ConnString == "" {
		return nil, errors.New("notify: no connection string")
	}
	connCfg, err := pgx.ParseConfig(cfg.ConnString)
	if err != nil {
		// pgx's parse errors mask the password, but say nothing more
		// to be sure.
		return nil, errors.New("notify: the connection string does not parse")
	}
	if connCfg.ConnectTimeout == 0 {
		connCfg.ConnectTimeout = 10 * time.Second
	}
	// The pool's DSN is often reused here: pgxpool's own parameters
	// (pool_max_conns, …) would otherwise be sent to the server as
	// settings, which refuses them.
	for k := range connCfg.RuntimeParams {
		if strings.HasPrefix(k, "pool_") {
			delete(connCfg.RuntimeParams, k)
		}
	}
	if connCfg.RuntimeParams["application_name"] == "" {
		connCfg.RuntimeParams["application_name"] = DefaultApplicationName
	}
	if !ValidChannel(cfg.Channel) {
		return nil, fmt.Errorf("notify: channel %q is not an identifier of letters, digits and '_' up to 63 bytes", cfg.Channel)
	}
	if cfg.Handler == nil {
		return nil, errors.New("notify: no Handler")
	}
	if cfg.TopicField == "" {
		cfg.TopicField = DefaultTopicField
	}
	if cfg.EventField == "" {
		cfg.EventField = DefaultEventField
	}
	if cfg.DataField == "" {
		cfg.DataField = DefaultDataField
	}
	if cfg.ReconnectDelay <= 0 {
		cfg.ReconnectDelay = DefaultReconnectDelay
	}
	if cfg.LeaderPoll <= 0 {
		cfg.LeaderPoll = DefaultLeaderPoll
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg:     cfg,
		connCfg: connCfg,
		listen:  "LISTEN " + pgx.Identifier{cfg.Channel}.Sanitize(),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	l.state.Store(StateConnecting)
	return l, nil
}

// Start starts the Listener's goroutine, which connects, LISTENs and
// reconnects after failures until Close. It returns at once; a failure to
// connect goes to OnError. Calls after the first do nothing.
func (l *Listener) Start() {
	l.startOnce.Do(func() {
		go l.run()
	})
}

// Invalid returns how many notifications were dropped as invalid.
func (l *Listener) Invalid() uint64 { return l.invalid.Load() }

// State returns where the Listener's session is now.
func (l *Listener) State() State { return l.state.Load().(State) }

// Channel returns the channel the Listener LISTENs on.
func (l *Listener) Channel() string { return l.cfg.Channel }

// Close stops the Listener and waits for its goroutine to end, or for ctx
// to be done. It closes the connection. Calls after the first wait again.
func (l *Listener) Close(ctx context.Context) error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.startOnce.Do(func() { close(l.done) }) // never started: nothing to wait for
	})
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Listener) run() {
	defer close(l.done)
	defer l.state.Store(StateClosed)
	connected := false
	for {
		err := l.session(&connected)
		l.state.Store(StateConnecting)
		if l.ctx.Err() != nil {
			return
		}
		if err != nil && l.cfg.OnError != nil {
			l.cfg.OnError(l.redact(err))
		}
		t := time.NewTimer(l.cfg.ReconnectDelay)
		select {
		case <-l.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session connects, LISTENs and delivers until the connection fails or
// the Listener closes. *connected tells whether a session got as far as
// LISTEN before, so that the next one is a reconnect.
func (l *Listener) session(connected *bool) error {
	conn, err := pgx.ConnectConfig(l.ctx, l.connCfg)
	if err != nil {
		return fmt.Errorf("notify: connecting: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	if l.cfg.LeaderLock != 0 {
		// The lock, once won, goes with the connection, closed by the
		// defer above.
		if won, err := l.awaitLock(conn); !won {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(l.ctx, pingTimeout)
	_, err = conn.Exec(ctx, l.listen)
	cancel()
	if err != nil {
		return fmt.Errorf("notify: %s: %w", l.listen, err)
	}
	l.state.Store(StateListening)
	if l.cfg.OnListen != nil {
		l.cfg.OnListen()
	}
	if l.cfg.LeaderLock != 0 && l.cfg.OnLeader != nil {
		l.cfg.OnLeader(true)
		defer l.cfg.OnLeader(false)
	}
	if *connected && l.cfg.OnReconnect != nil {
		l.cfg.OnReconnect()
	}
	*connected = true
	for {
		ctx, cancel := context.WithTimeout(l.ctx, pingInterval)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if l.ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("notify: waiting for notifications: %w", err)
			}
			// Quiet for pingInterval: make sure the server is still there.
			ctx, cancel := context.WithTimeout(l.ctx, pingTimeout)
			_, err = conn.Exec(ctx, "SELECT 1")
			cancel()
			if err != nil {
				if l.ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("notify: checking the connection: %w", err)
			}
			continue
		}
		if msg, reason := l.parse(n.Payload); reason == "" {
			l.cfg.Handler(msg)
		} else {
			l.invalid.Add(1)
			if l.cfg.OnDrop != nil {
				l.cfg.OnDrop(reason)
			}
		}
	}
}

// awaitLock polls pg_try_advisory_lock on conn every LeaderPoll until it
// holds the lock (true), the Listener closes (false, nil) or the
// connection fails (false, err). Polling on the connection that will
// LISTEN is what ties the lock's life to the listening session's.
func (l *Listener) awaitLock(conn *pgx.Conn) (bool, error) {
	l.state.Store(StateStandby)
	for {
		ctx, cancel := context.WithTimeout(l.ctx, pingTimeout)
		var won bool
		err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", l.cfg.LeaderLock).Scan(&won)
		cancel()
		if l.ctx.Err() != nil {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("notify: trying the leader lock: %w", err)
		}
		if won {
			return true, nil
		}
		t := time.NewTimer(l.cfg.LeaderPoll)
		select {
		case <-l.ctx.Done():
			t.Stop()
			return false, nil
		case <-t.C:
		}
	}
}

// redact removes the connection's password from an error's text: a
// server or network error may quote the connection parameters.
func (l *Listener) redact(err error) error {
	pw := l.connCfg.Password
	if pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))
}

// parse maps a payload to a Notification: a JSON object of at most
// MaxPayload bytes whose topic field is a valid, non-system wire topic and
// whose event field a valid event; data is any JSON value, null when
// missing. A dropped payload gets a Reason* constant.
func (l *Listener) parse(payload string) (Notification, string) {
	if len(payload) >= MaxPayload {
		return Notification{}, ReasonTooLarge
	}
	// A SQL_ASCII database passes any bytes through; invalid UTF-8 in a
	// text frame makes browsers drop the connection (RFC 6455 §8.1), and
	// encoding/json would not refuse it.
	if !utf8.ValidString(payload) {
		return Notification{}, ReasonInvalid
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(payload), &obj); err != nil || obj == nil {
		return Notification{}, ReasonInvalid
	}
	var n Notification
	if err := json.Unmarshal(obj[l.cfg.TopicField], &n.Topic); err != nil {
		return Notification{}, ReasonInvalid
	}
	if err := json.Unmarshal(obj[l.cfg.EventField], &n.Event); err != nil {
		return Notification{}, ReasonInvalid
	}
	if !wire.ValidTopic(n.Topic, l.cfg.AllowNonASCIITopics) || !wire.ValidEvent(n.Event) {
		return Notification{}, ReasonInvalid
	}
	if wire.IsSystem(n.Topic) {
		return Notification{}, ReasonSystemTopic
	}
	n.Data = obj[l.cfg.DataField]
	if n.Data == nil {
		n.Data = json.RawMessage("null")
	}
	return n, ""
}
