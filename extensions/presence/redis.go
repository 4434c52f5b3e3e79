package presence

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/wire"
	"github.com/caddy-realtime/realtime/internal/resub"
)

// DefaultRedisTimeout is the default RedisConfig.Timeout.
const DefaultRedisTimeout = 5 * time.Second

// maxQueuedChanges bounds the change events received and not yet handed
// to OnChange; beyond it they are dropped and counted (Redis.Dropped), as
// the subscriber must never block the connection it shares with other
// commands (rueidis#596). A mass disconnect of 10 000 members elsewhere
// queues 10 000 events for a moment.
const maxQueuedChanges = 1 << 16

// Key names. Every key starts with keyRoot (after KeyPrefix), outside the
// reference Node package's "presence:*" keys, so an app of that package
// clearing its own keys on the same Redis leaves this Tracker's alone.
const (
	keyRoot = "rt:presence:"
	// DefaultRedisChannel is the default RedisConfig.Channel, after KeyPrefix.
	DefaultRedisChannel = keyRoot + "events"
)

// ErrClosed means the Tracker was closed: it records nothing any more.
var ErrClosed = errors.New("presence: tracker closed")

var (
	//go:embed redis_join.lua
	joinLua string
	//go:embed redis_leave.lua
	leaveLua string
	//go:embed redis_sweep.lua
	sweepLua string

	// Package-level, as rueidis scripts are safe for concurrent use and
	// keep their SHA-1: EVALSHA, falling back to EVAL once per server.
	joinScript  = rueidis.NewLuaScript(joinLua)
	leaveScript = rueidis.NewLuaScript(leaveLua)
	sweepScript = rueidis.NewLuaScript(sweepLua)
)

// RedisConfig configures a Redis Tracker. InstanceID is required; every
// other zero field takes its default.
type RedisConfig struct {
	// Config holds TTL, Refresh and OnChange. Now is ignored: leases
	// expire by the Redis server's clock, so instances with skewed clocks
	// agree.
	Config

	// KeyPrefix is prepended to every key, so several gateways (or tests)
	// can share a server. It must not contain '{' or '}', which would
	// change the keys' hash slot. Default: "".
	KeyPrefix string

	// InstanceID names this Tracker's connections and lease, and its
	// change events, which it skips when Redis echoes them. It must be
	// unique among the Trackers sharing KeyPrefix, in every process (a
	// process with two presence rules needs two), stable for the
	// Tracker's life, and free of '{' and '}'. Required.
	InstanceID string

	// Channel is the Redis channel change events are published and
	// received on. Every Tracker on it receives every other's changes,
	// whatever their topics: Trackers of different rules need distinct
	// channels (or prefixes). Default: KeyPrefix + DefaultRedisChannel.
	Channel string

	// Timeout is the deadline of the Tracker's own Redis calls (a
	// heartbeat's round trips) and how long NewRedis waits for its
	// subscription. Join, Leave, List and Count use the caller's ctx.
	// Default: DefaultRedisTimeout.
	Timeout time.Duration

	// StartUnreachable makes NewRedis return a working Tracker when Redis
	// does not confirm the subscription within Timeout, instead of an
	// error: the subscription keeps retrying with backoff, Reachable
	// reports false until it is confirmed, and changes published
	// meanwhile are missed (as after any resubscription). A gateway uses
	// it so that Caddy starts during a Redis outage.
	StartUnreachable bool

	// OnError is called with every failure the caller cannot see: a
	// failed heartbeat, an ended subscription, an undecodable event, a
	// panic in OnChange. It may be called from several goroutines at
	// once, and often during an outage; the caller rate-limits its
	// logging. It must not block. Default: nil.
	OnError func(err error)
}

// Redis is the Tracker of a gateway cluster sharing one Redis server (or
// one Redis Cluster: each topic's keys share the {topic} hash slot). It
// needs Redis 7.0, no per-field expiry (HPEXPIRE is 7.4).
//
// # Data
//
// A topic t has these keys, with p the KeyPrefix:
//
//	p rt:presence:{t}:members       hash key → data, the member's latest (raw JSON; "" is null)
//	p rt:presence:{t}:counts        hash key → its live connections, over every instance
//	p rt:presence:{t}:leases        hash instance id → lease expiry, ms by the Redis clock
//	p rt:presence:{t}:conns:<inst>  hash, one per instance: "<len(connID)>:<connID><key>" → join token
//
// A member is in members exactly while its count is positive, so List is
// one HGETALL and Count one HLEN. A connection is one field of its
// instance's conns hash, which the Join and Leave scripts (redis_join.lua,
// redis_leave.lua) add or remove while adjusting the count: O(1) whatever
// the topic's size, where the reference package scanned the topic
// (docs/design.md, lesson L-29). Each script decides Joined, Updated or Left
// from the count and the stored data and publishes the change, atomically.
//
// An instance's connections on a topic live as long as its lease: expiry
// is per instance and topic, not per connection, so a heartbeat renews
// one field per topic instead of every connection's, and a crash costs
// one reap of the dead instance's conns hash. Timestamps come from TIME in
// the scripts, never from an instance's clock. Keys have no TTL: a topic
// abandoned by crashed instances only is reaped by the next List, Count
// or heartbeat that touches it.
//
// # Changes
//
// The scripts PUBLISH each change on Channel as
//
//	{"i":<instance id>[,"all":true],"t":<topic>,"k":"join"|"update"|"leave","key":<key>,"d":<data>}
//
// spliced from strings (data is never re-encoded). A subscriber goroutine
// hands them, without blocking, to a dispatcher goroutine that calls
// OnChange in Redis's order. A Tracker skips its own events, whose changes
// its Join and Leave returned, except those marked "all": changes that no
// caller's return value reported (reaped members, and the repairs below),
// which every instance receives, this one included. Pub/Sub delivers at
// most once: changes published while a subscription is down are missed
// (OnError says when it resubscribes), as with the bus.
//
// # Heartbeat
//
// Every Refresh one pipelined round trip runs a sweep script
// (redis_sweep.lua) per topic this instance follows: those it has
// connections on, has listed or counted, or has received a join or update
// of. The script renews this instance's lease, and reaps the conns of
// instances whose lease expired, decrementing their members and
// publishing a leave (marked "all") for each that reaches zero. A crashed
// instance's members therefore leave within TTL plus one heartbeat of its
// last refresh, reported to every instance (docs/design.md, lesson K-6), even
// when it held every connection of the topic: every instance that heard
// of a member sweeps its topic. That costs one script run, O(instances),
// per instance, followed topic and heartbeat (10 instances following
// 10 000 topics every 30 s: about 3 300 runs a second). A topic with no
// members and none of this instance's connections is forgotten.
//
// The heartbeat also repairs what a failed call may have left. A Join
// that failed (a timeout may hide a script that ran) and a Leave that
// failed are undone by a leave that removes the connection only if it
// still holds that Join's token, so it never removes a later join of
// the same connection. An instance whose lease expired while it was alive
// (a long pause, an outage) finds fewer connections in Redis than it
// holds, and joins them again, keeping the data of members present
// meanwhile; its clients saw them leave and join again.
//
// Goroutines: 3 (heartbeat, subscriber, dispatcher; 1 without OnChange),
// plus one that waits for them. Close stops them and removes this
// instance's connections.
type Redis struct {
	client    rueidis.Client
	prefix    string
	id        string
	channel   string
	ttl       string // ARGV: TTL in milliseconds
	heartbeat time.Duration
	timeout   time.Duration
	onChange  ChangeFunc
	onError   func(error)

	ownPrefix string // how this instance's own events start: {"i":<id>,"t":
	allPrefix string // how its "all" events start: {"i":<id>,"all":true,"t":

	ctx    context.Context // canceled by Close; ends every goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup
	exited chan struct{} // closed once wg is done

	firstSub   chan struct{} // closed at the first confirmed subscription
	subOnce    sync.Once
	subscribed atomic.Uint64 // confirmed subscriptions, counting re-subscriptions
	receiving  atomic.Bool   // a confirmed subscription is running now

	mu      sync.Mutex // guards topics, repairs, tokens, touches and closed
	topics  map[string]*topicState
	repairs []repair
	tokens  uint64
	touches uint64
	closed  bool

	qmu   sync.Mutex // guards queue
	queue []string   // received events waiting for the dispatcher
	wake  chan struct{}

	dropped, invalid atomic.Uint64
	beats            atomic.Uint64 // heartbeats completed, for tests

	closeOnce sync.Once
	releaseMu sync.Mutex
	released  bool
}

// topicState is what this instance knows of a topic it sweeps: its own
// connections there, which it renews and repairs.
type topicState struct {
	conns   map[string]ownConn // by connection field
	touched uint64             // r.touches when last joined, listed or changed elsewhere
}

type ownConn struct {
	key     string
	data    json.RawMessage // never modified once stored
	token   string
	pending bool // its Join is in flight: Redis may not hold it yet
}

// repair is a conditional leave: remove field from topic if it still
// holds token.
type repair struct {
	topic, field, key, token string
}

// NewRedis returns a Tracker on client configured by cfg. With an
// OnChange, it returns once its subscription is confirmed (within
// Timeout; otherwise it stops and returns an error), so that it receives
// every change published after it returns. The caller must Close it,
// which stops its goroutines; the caller keeps ownership of client and
// closes it after.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	switch {
	case client == nil:
		return nil, errors.New("presence: no Redis client")
	case cfg.InstanceID == "":
		return nil, errors.New("presence: an instance id is required")
	case strings.ContainsAny(cfg.InstanceID, "{}"):
		return nil, fmt.Errorf("presence: instance id %q contains '{' or '}', which would let keys of two topics collide", cfg.InstanceID)
	case strings.ContainsAny(cfg.KeyPrefix, "{}"):
		return nil, fmt.Errorf("presence: key prefix %q contains '{' or '}', which would put keys of different topics in one Redis Cluster slot", cfg.KeyPrefix)
	case cfg.Timeout < 0:
		return nil, errors.New("presence: negative timeout")
	}
	c := cfg.Config.WithDefaults()
	if c.Refresh >= c.TTL {
		return nil, fmt.Errorf("presence: refresh %s is not below the TTL %s: live members would expire between refreshes", c.Refresh, c.TTL)
	}
	r := &Redis{
		client:    client,
		prefix:    cfg.KeyPrefix,
		id:        cfg.InstanceID,
		channel:   cfg.Channel,
		ttl:       strconv.FormatInt(max(1, c.TTL.Milliseconds()), 10),
		heartbeat: c.Refresh,
		timeout:   cfg.Timeout,
		onChange:  c.OnChange,
		onError:   cfg.OnError,
		exited:    make(chan struct{}),
		firstSub:  make(chan struct{}),
		topics:    make(map[string]*topicState),
		wake:      make(chan struct{}, 1),
	}
	if r.channel == "" {
		r.channel = r.prefix + DefaultRedisChannel
	}
	if r.timeout == 0 {
		r.timeout = DefaultRedisTimeout
	}
	if r.onError == nil {
		r.onError = func(error) {}
	}
	r.ownPrefix = `{"i":` + string(wire.AppendString(nil, r.id)) + `,"t":`
	r.allPrefix = `{"i":` + string(wire.AppendString(nil, r.id)) + `,"all":true,"t":`
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.heartbeatLoop()
	if r.onChange != nil {
		r.wg.Add(2)
		go r.subscribeLoop()
		go r.dispatchLoop()
	}
	go func() {
		r.wg.Wait()
		close(r.exited)
	}()
	if r.onChange == nil {
		return r, nil
	}
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case <-r.firstSub:
		return r, nil
	case <-t.C:
	}
	if cfg.StartUnreachable {
		r.onError(fmt.Errorf("presence: redis did not confirm the subscription to %q within %s; retrying in the background", r.channel, r.timeout))
		return r, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	_ = r.Close(ctx)
	return nil, fmt.Errorf("presence: redis did not confirm the subscription to %q within %s", r.channel, r.timeout)
}

// keys returns topic's members, counts, leases and this instance's conns
// keys. The hash tag {topic} puts them in one slot; a topic holding '}'
// shortens the tag equally in all. Keys of distinct topics never collide,
// as an instance id holds no '}'.
func (r *Redis) keys(topic string) []string {
	base := r.prefix + keyRoot + "{" + topic + "}:"
	return []string{base + "members", base + "counts", base + "leases", base + "conns:" + r.id}
}

// head starts a change event of topic published by this instance; all
// marks the changes no caller's return value reported.
func (r *Redis) head(topic string, all bool) string {
	prefix := r.ownPrefix
	if all {
		prefix = r.allPrefix
	}
	return string(wire.AppendString([]byte(prefix), topic))
}

// connField is a connection's field in its instance's conns hash. The
// length prefix keeps (connID, key) pairs distinct whatever bytes they
// hold, and lets the sweep script find the key.
func connField(connID, key string) string {
	return strconv.Itoa(len(connID)) + ":" + connID + key
}

// Join implements Tracker with one script run. data must be valid JSON
// (or nil), as change events splice it. The Tracker keeps a copy of data;
// the Data of the returned Member is that copy and must not be modified.
// A Join that fails is undone by the next heartbeat, should its script
// have run.
func (r *Redis) Join(ctx context.Context, topic, key, connID string, data json.RawMessage) (Change, error) {
	if err := ctx.Err(); err != nil {
		return Change{}, err
	}
	if len(data) > 0 && !json.Valid(data) {
		return Change{}, fmt.Errorf("presence: joining %q: the member's data is not valid JSON", topic)
	}
	data = bytes.Clone(data)
	field := connField(connID, key)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return Change{}, ErrClosed
	}
	r.tokens++
	token := strconv.FormatUint(r.tokens, 10)
	st := r.topicLocked(topic)
	prev, hadPrev := st.conns[field]
	st.conns[field] = ownConn{key: key, data: data, token: token, pending: true}
	r.mu.Unlock()

	kind, err := r.join(ctx, topic, field, key, data, token, false)

	r.mu.Lock()
	if st := r.topics[topic]; st != nil {
		if c, ok := st.conns[field]; ok && c.token == token {
			switch {
			case err == nil:
				c.pending = false
				st.conns[field] = c
			case hadPrev:
				st.conns[field] = prev
			default:
				delete(st.conns, field)
			}
		}
	}
	if err != nil {
		r.repairs = append(r.repairs, repair{topic: topic, field: field, key: key, token: token})
	}
	r.mu.Unlock()
	if err != nil {
		return Change{}, fmt.Errorf("presence: joining %q: %w", topic, err)
	}
	return Change{Topic: topic, Kind: kind, Member: Member{Key: key, Data: data}}, nil
}

// topicLocked returns topic's state, creating it, and marks it touched, so
// that a heartbeat that found it empty before does not forget it. Called
// with r.mu held.
func (r *Redis) topicLocked(topic string) *topicState {
	st := r.topics[topic]
	if st == nil {
		st = &topicState{conns: make(map[string]ownConn)}
		r.topics[topic] = st
	}
	r.touches++
	st.touched = r.touches
	return st
}

// join runs the join script; resync marks the event "all" and keeps a
// present member's data.
func (r *Redis) join(ctx context.Context, topic, field, key string, data json.RawMessage, token string, resync bool) (Kind, error) {
	res := joinScript.Exec(ctx, r.client, r.keys(topic), r.joinArgs(topic, field, key, data, token, resync))
	return parseJoin(res)
}

func (r *Redis) joinArgs(topic, field, key string, data json.RawMessage, token string, resync bool) []string {
	keep := "0"
	if resync {
		keep = "1"
	}
	// data is the Tracker's own copy, never modified: the zero-copy string
	// is safe even if rueidis writes the command after ctx ended.
	return []string{r.id, field, key, rueidis.BinaryString(data), token, r.ttl, r.channel, r.head(topic, resync), keep}
}

var errMalformed = errors.New("malformed script reply")

func parseJoin(res rueidis.RedisResult) (Kind, error) {
	n, err := res.AsInt64()
	if err != nil {
		return 0, err
	}
	switch Kind(n) {
	case NoChange, Joined, Updated:
		return Kind(n), nil
	}
	return 0, errMalformed
}

// Leave implements Tracker with one script run, O(1) in the topic's size.
// A Leave that fails is retried by the next heartbeat, which removes the
// connection unless it joined again meanwhile.
func (r *Redis) Leave(ctx context.Context, topic, key, connID string) (Change, error) {
	if err := ctx.Err(); err != nil {
		return Change{}, err
	}
	field := connField(connID, key)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return Change{}, ErrClosed
	}
	var token string
	known := false
	if st := r.topics[topic]; st != nil {
		if c, ok := st.conns[field]; ok {
			token, known = c.token, true
			delete(st.conns, field)
		}
	}
	r.mu.Unlock()

	res := leaveScript.Exec(ctx, r.client, r.keys(topic), r.leaveArgs(topic, field, key, "", false))
	kind, data, err := parseLeave(res)
	if err != nil {
		if known {
			r.mu.Lock()
			r.repairs = append(r.repairs, repair{topic: topic, field: field, key: key, token: token})
			r.mu.Unlock()
		}
		return Change{}, fmt.Errorf("presence: leaving %q: %w", topic, err)
	}
	return Change{Topic: topic, Kind: kind, Member: Member{Key: key, Data: data}}, nil
}

func (r *Redis) leaveArgs(topic, field, key, token string, all bool) []string {
	return []string{r.id, field, key, token, r.channel, r.head(topic, all)}
}

func parseLeave(res rueidis.RedisResult) (Kind, json.RawMessage, error) {
	arr, err := res.ToArray()
	if err != nil {
		return 0, nil, err
	}
	if len(arr) != 2 {
		return 0, nil, errMalformed
	}
	n, err := arr[0].AsInt64()
	if err != nil || (Kind(n) != NoChange && Kind(n) != Left) {
		return 0, nil, errMalformed
	}
	var data json.RawMessage
	if s, err := arr[1].ToString(); err == nil && s != "" {
		data = json.RawMessage(s)
	}
	return Kind(n), data, nil
}

// List implements Tracker with one sweep script run, which first reaps
// the connections of instances whose lease expired, so no expired member
// is listed. The topic joins those this instance sweeps every heartbeat,
// so that its observers hear of crashed instances' leaves, until it has
// no member.
func (r *Redis) List(ctx context.Context, topic string) ([]Member, error) {
	if err := r.see(ctx, topic); err != nil {
		return nil, err
	}
	flat, err := sweepScript.Exec(ctx, r.client, r.keys(topic), r.sweepArgs(topic, "list")).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("presence: listing %q: %w", topic, err)
	}
	if len(flat)%2 != 0 {
		return nil, fmt.Errorf("presence: listing %q: %w", topic, errMalformed)
	}
	out := make([]Member, 0, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		m := Member{Key: flat[i]}
		if flat[i+1] != "" {
			m.Data = json.RawMessage(flat[i+1])
		}
		out = append(out, m)
	}
	return out, nil
}

// Count implements Tracker like List, answering HLEN.
func (r *Redis) Count(ctx context.Context, topic string) (int, error) {
	if err := r.see(ctx, topic); err != nil {
		return 0, err
	}
	n, err := sweepScript.Exec(ctx, r.client, r.keys(topic), r.sweepArgs(topic, "count")).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("presence: counting %q: %w", topic, err)
	}
	return int(n), nil
}

// see checks ctx and the Tracker, and adds topic to the swept ones.
func (r *Redis) see(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.topicLocked(topic)
	return nil
}

func (r *Redis) sweepArgs(topic, mode string) []string {
	return []string{r.id, mode, r.ttl, r.channel, r.head(topic, true), r.prefix + keyRoot + "{" + topic + "}:conns:"}
}

// heartbeatLoop runs a heartbeat every r.heartbeat until Close.
func (r *Redis) heartbeatLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.safely("heartbeat", r.beat)
		}
	}
}

// safely runs f, reporting a panic to OnError with its stack, so that a
// bug in one heartbeat or callback does not end the goroutine.
func (r *Redis) safely(what string, f func()) {
	defer func() {
		if p := recover(); p != nil {
			r.onError(fmt.Errorf("presence: %s panicked (continuing): %v\n%s", what, p, debug.Stack()))
		}
	}()
	f()
}

// beat repairs failed calls, then sweeps every known topic (renewing this
// instance's leases and reaping expired ones) in one pipelined round
// trip, then joins again the connections of topics where Redis holds
// fewer of this instance's connections than it confirmed.
func (r *Redis) beat() {
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	r.mu.Lock()
	repairs := r.repairs
	r.repairs = nil
	names := make([]string, 0, len(r.topics))
	confirmed := make([]int, 0, len(r.topics))
	touched := make(map[string]uint64, len(r.topics))
	for name, st := range r.topics {
		n := 0
		for _, c := range st.conns {
			if !c.pending {
				n++
			}
		}
		names = append(names, name)
		confirmed = append(confirmed, n)
		touched[name] = st.touched
	}
	r.mu.Unlock()

	if len(repairs) > 0 {
		r.repair(ctx, repairs)
	}
	if len(names) == 0 {
		r.beats.Add(1)
		return
	}
	execs := make([]rueidis.LuaExec, len(names))
	for i, name := range names {
		execs[i] = rueidis.LuaExec{Keys: r.keys(name), Args: r.sweepArgs(name, "beat")}
	}
	var (
		resync, empty []string
		failed        int
		firstErr      error
	)
	for i, res := range sweepScript.ExecMulti(ctx, r.client, execs...) {
		counts, err := res.AsIntSlice()
		if err == nil && len(counts) != 2 {
			err = errMalformed
		}
		if err != nil {
			failed++
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		if counts[0] < int64(confirmed[i]) {
			resync = append(resync, names[i])
		}
		if counts[1] == 0 {
			empty = append(empty, names[i])
		}
	}
	if failed > 0 {
		r.onError(fmt.Errorf("presence: heartbeat failed on %d of %d topics (members of this instance expire if it keeps failing for the TTL): %w", failed, len(names), firstErr))
	}
	if len(empty) > 0 {
		r.mu.Lock()
		for _, name := range empty {
			if st := r.topics[name]; st != nil && len(st.conns) == 0 && st.touched == touched[name] {
				delete(r.topics, name)
			}
		}
		r.mu.Unlock()
	}
	for _, name := range resync {
		r.resync(ctx, name)
	}
	r.beats.Add(1)
}

// repair runs conditional leaves, in one round trip, and keeps those that
// failed for the next heartbeat.
func (r *Redis) repair(ctx context.Context, repairs []repair) {
	execs := make([]rueidis.LuaExec, len(repairs))
	for i, rp := range repairs {
		execs[i] = rueidis.LuaExec{Keys: r.keys(rp.topic), Args: r.leaveArgs(rp.topic, rp.field, rp.key, rp.token, true)}
	}
	var failed []repair
	var firstErr error
	for i, res := range leaveScript.ExecMulti(ctx, r.client, execs...) {
		if _, _, err := parseLeave(res); err != nil {
			failed = append(failed, repairs[i])
			firstErr = cmp.Or(firstErr, err)
		}
	}
	if len(failed) > 0 {
		r.mu.Lock()
		r.repairs = append(r.repairs, failed...)
		r.mu.Unlock()
		r.onError(fmt.Errorf("presence: undoing %d failed joins and leaves (retrying at the next heartbeat): %w", len(failed), firstErr))
	}
}

// resync joins again this instance's confirmed connections on topic,
// which Redis lost (its lease expired and another instance reaped them).
// A connection that left or joined again meanwhile is then repaired.
func (r *Redis) resync(ctx context.Context, topic string) {
	type snap struct {
		field string
		c     ownConn
	}
	r.mu.Lock()
	var conns []snap
	if st := r.topics[topic]; st != nil {
		for f, c := range st.conns {
			if !c.pending {
				conns = append(conns, snap{f, c})
			}
		}
	}
	r.mu.Unlock()
	if len(conns) == 0 {
		return
	}
	execs := make([]rueidis.LuaExec, len(conns))
	for i, s := range conns {
		execs[i] = rueidis.LuaExec{Keys: r.keys(topic), Args: r.joinArgs(topic, s.field, s.c.key, s.c.data, s.c.token, true)}
	}
	var failed int
	var firstErr error
	for _, res := range joinScript.ExecMulti(ctx, r.client, execs...) {
		if _, err := parseJoin(res); err != nil {
			failed++
			firstErr = cmp.Or(firstErr, err)
		}
	}
	r.mu.Lock()
	st := r.topics[topic]
	for _, s := range conns {
		var c ownConn
		ok := false
		if st != nil {
			c, ok = st.conns[s.field]
		}
		if !ok || c.token != s.c.token {
			r.repairs = append(r.repairs, repair{topic: topic, field: s.field, key: s.c.key, token: s.c.token})
		}
	}
	r.mu.Unlock()
	if failed > 0 {
		r.onError(fmt.Errorf("presence: joining again %d of %d connections on %q that redis lost (retrying at the next heartbeat): %w", failed, len(conns), topic, firstErr))
	}
}

// subscribeLoop keeps one Receive of the channel running until Close.
func (r *Redis) subscribeLoop() {
	defer r.wg.Done()
	resub.Loop(r.ctx, func() (bool, error) {
		before := r.subscribed.Load()
		err := r.client.Receive(rueidis.WithOnSubscriptionHook(r.ctx, r.onSubscription),
			r.client.B().Subscribe().Channel(r.channel).Build(), r.onMessage)
		r.receiving.Store(false)
		return r.subscribed.Load() != before, err
	}, func(err error, wait time.Duration) {
		r.onError(fmt.Errorf("presence: subscription to %q ended (resubscribing in %s; changes published meanwhile are missed): %w", r.channel, wait, err))
	})
}

// onSubscription runs on rueidis's connection reader: it must not block.
func (r *Redis) onSubscription(s rueidis.PubSubSubscription) {
	if s.Kind == "subscribe" && s.Channel == r.channel {
		r.receiving.Store(true)
		r.subscribed.Add(1)
		r.subOnce.Do(func() { close(r.firstSub) })
	}
}

// onMessage runs on the Receive goroutine, which the connection reader
// feeds: it only queues, and drops when the queue is full.
func (r *Redis) onMessage(m rueidis.PubSubMessage) {
	if strings.HasPrefix(m.Message, r.ownPrefix) {
		return // this instance's Join or Leave returned it
	}
	r.qmu.Lock()
	if len(r.queue) >= maxQueuedChanges {
		r.qmu.Unlock()
		r.dropped.Add(1)
		r.onError(fmt.Errorf("presence: dropping a change received on %q: %d changes already wait for OnChange", r.channel, maxQueuedChanges))
		return
	}
	r.queue = append(r.queue, m.Message)
	r.qmu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default: // a wake-up is pending; the dispatcher takes the whole queue
	}
}

// dispatchLoop decodes queued events and hands them to OnChange, in
// order, until Close.
func (r *Redis) dispatchLoop() {
	defer r.wg.Done()
	var batch []string
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.wake:
		}
		r.qmu.Lock()
		batch, r.queue = r.queue, batch[:0]
		r.qmu.Unlock()
		changes := make([]Change, 0, len(batch))
		for _, msg := range batch {
			c, ok, err := r.decodeEvent(msg)
			switch {
			case err != nil:
				r.invalid.Add(1)
				r.onError(fmt.Errorf("presence: dropping an event received on %q: %w", r.channel, err))
			case ok:
				changes = append(changes, c)
			}
		}
		clear(batch)
		r.follow(changes)
		if len(changes) > 0 && r.ctx.Err() == nil {
			r.safely("OnChange", func() { r.onChange(changes) })
		}
	}
}

// follow adds the topics where members joined elsewhere to those this
// instance sweeps: should every instance holding them crash, this one
// still reaps them and its clients hear the leaves (docs/protocol.md §6.1).
func (r *Redis) follow(changes []Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for _, c := range changes {
		if c.Kind == Joined || c.Kind == Updated {
			r.topicLocked(c.Topic)
		}
	}
}

// event is a change event as the scripts publish it.
type event struct {
	I   string          `json:"i"`
	All bool            `json:"all"`
	T   string          `json:"t"`
	K   string          `json:"k"`
	Key string          `json:"key"`
	D   json.RawMessage `json:"d"`
}

var eventKinds = map[string]Kind{"join": Joined, "update": Updated, "leave": Left}

// decodeEvent decodes a received event; ok is false for an event of this
// instance's that onMessage's prefix check could not recognize.
func (r *Redis) decodeEvent(msg string) (c Change, ok bool, err error) {
	var e event
	if err := json.Unmarshal([]byte(msg), &e); err != nil {
		return Change{}, false, err
	}
	kind, known := eventKinds[e.K]
	if !known || e.T == "" {
		return Change{}, false, fmt.Errorf("not a change event: kind %q, topic %q", e.K, e.T)
	}
	if e.I == r.id && !e.All {
		return Change{}, false, nil
	}
	if string(e.D) == "null" {
		e.D = nil // the contract's null
	}
	return Change{Topic: e.T, Kind: kind, Member: Member{Key: e.Key, Data: e.D}}, true, nil
}

// Close stops the heartbeat, the subscriber and the dispatcher, waiting
// for them until ctx ends, then removes this instance's connections from
// every topic where it has some, in one round trip, publishing a leave for each
// member that had no other connection: a graceful stop is seen at once,
// not after the TTL. OnChange is not called after Close returns; Join,
// Leave, List and Count return ErrClosed. A Join or Leave in flight
// during Close may leave its connection behind, which expires after the
// TTL like a crashed instance's. Close is idempotent; a Close whose ctx
// ended before the removal may be called again to retry it. It leaves the
// client open.
func (r *Redis) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
	})
	select {
	case <-r.exited:
	case <-ctx.Done():
		return fmt.Errorf("presence: waiting for the redis tracker to stop: %w", ctx.Err())
	}
	r.releaseMu.Lock()
	defer r.releaseMu.Unlock()
	if r.released {
		return nil
	}
	// The topics where Redis may hold this instance's connections: those
	// it holds, and those of failed calls not repaired yet.
	r.mu.Lock()
	mine := make(map[string]struct{})
	for name, st := range r.topics {
		if len(st.conns) > 0 {
			mine[name] = struct{}{}
		}
	}
	for _, rp := range r.repairs {
		mine[rp.topic] = struct{}{}
	}
	r.mu.Unlock()
	names := make([]string, 0, len(mine))
	for name := range mine {
		names = append(names, name)
	}
	if len(names) > 0 {
		execs := make([]rueidis.LuaExec, len(names))
		for i, name := range names {
			execs[i] = rueidis.LuaExec{Keys: r.keys(name), Args: r.sweepArgs(name, "drop")}
		}
		for _, res := range sweepScript.ExecMulti(ctx, r.client, execs...) {
			if err := res.Error(); err != nil {
				return fmt.Errorf("presence: removing this instance's connections (they expire after the TTL): %w", err)
			}
		}
	}
	r.released = true
	return nil
}

// Dropped reports how many change events were dropped because
// maxQueuedChanges were already waiting for OnChange.
func (r *Redis) Dropped() uint64 { return r.dropped.Load() }

// Reachable reports whether the change subscription is confirmed and
// running: while it is not, changes made on other instances are missed.
// Without an OnChange there is no subscription, and it reports true.
func (r *Redis) Reachable() bool { return r.onChange == nil || r.receiving.Load() }

// Invalid reports how many received events could not be decoded.
func (r *Redis) Invalid() uint64 { return r.invalid.Load() }

// Interface guards
var (
	_ Tracker = (*Redis)(nil)
	_ Closer  = (*Redis)(nil)
)
