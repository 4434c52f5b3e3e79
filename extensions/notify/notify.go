// Package notify receives events published with PostgreSQL NOTIFY: a
// Listener holds one dedicated connection LISTENing on a channel, parses
// each payload as a JSON object naming a topic, an event and data, and
// hands valid ones to a Handler.
//
// Notifications sent while the connection is down are lost (LISTEN state
// belongs to the session): after a reconnect the Listener calls
// OnReconnect, and the caller resyncs.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

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
)

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
	// Listener's goroutine: it must not block. Required.
	Handler func(Notification)

	// OnError, if set, receives every connection error before the
	// Listener reconnects. It runs on the Listener's goroutine.
	OnError func(error)

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
}

var channelRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// Listener receives the notifications of one channel. Start starts it;
// Close stops it.
type Listener struct {
	cfg     Config
	connCfg *pgx.ConnConfig
	listen  string // the LISTEN statement

	invalid atomic.Uint64

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
	if !channelRE.MatchString(cfg.Channel) {
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
	ctx, cancel := context.WithCancel(context.Background())
	return &Listener{
		cfg:     cfg,
		connCfg: connCfg,
		listen:  "LISTEN " + pgx.Identifier{cfg.Channel}.Sanitize(),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}, nil
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
	connected := false
	for {
		err := l.session(&connected)
		if l.ctx.Err() != nil {
			return
		}
		if err != nil && l.cfg.OnError != nil {
			l.cfg.OnError(err)
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
	ctx, cancel := context.WithTimeout(l.ctx, pingTimeout)
	_, err = conn.Exec(ctx, l.listen)
	cancel()
	if err != nil {
		return fmt.Errorf("notify: %s: %w", l.listen, err)
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
		if msg, ok := l.parse(n.Payload); ok {
			l.cfg.Handler(msg)
		} else {
			l.invalid.Add(1)
		}
	}
}

// parse maps a payload to a Notification: a JSON object of at most
// MaxPayload bytes whose topic field is a valid, non-system wire topic and
// whose event field a valid event; data is any JSON value, null when
// missing.
func (l *Listener) parse(payload string) (Notification, bool) {
	if len(payload) >= MaxPayload {
		return Notification{}, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(payload), &obj); err != nil || obj == nil {
		return Notification{}, false
	}
	var n Notification
	if err := json.Unmarshal(obj[l.cfg.TopicField], &n.Topic); err != nil {
		return Notification{}, false
	}
	if err := json.Unmarshal(obj[l.cfg.EventField], &n.Event); err != nil {
		return Notification{}, false
	}
	if !wire.ValidTopic(n.Topic, l.cfg.AllowNonASCIITopics) || wire.IsSystem(n.Topic) || !wire.ValidEvent(n.Event) {
		return Notification{}, false
	}
	n.Data = obj[l.cfg.DataField]
	if n.Data == nil {
		n.Data = json.RawMessage("null")
	}
	return n, true
}
