package cursor

import (
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
)

// DefaultRedisTimeout is the default RedisConfig.Timeout.
const DefaultRedisTimeout = 5 * time.Second

// forgetAfter is how long a topic with no entry and none of this
// instance's is still swept after this instance last wrote or listed it.
const forgetAfter = 10 * time.Minute

// ErrClosed means the Tracker was closed: it stores nothing any more.
var ErrClosed = errors.New("cursor: tracker closed")

var (
	//go:embed redis_update.lua
	updateLua string
	//go:embed redis_list.lua
	listLua string
	//go:embed redis_sweep.lua
	sweepLua string

	// Package-level, as rueidis scripts are safe for concurrent use and
	// keep their SHA-1: EVALSHA, falling back to EVAL once per server.
	updateScript = rueidis.NewLuaScript(updateLua)
	listScript   = rueidis.NewLuaScriptReadOnly(listLua)
	sweepScript  = rueidis.NewLuaScript(sweepLua)
)

// RedisConfig configures a Redis Tracker. InstanceID is required; every
// other zero field takes its default.
type RedisConfig struct {
	// Config holds TTL and OnExpire. TopicThrottle is the gateway's; Now is
	// ignored: leases expire by the Redis server's clock, so instances
	// with skewed clocks agree.
	Config

	// KeyPrefix is prepended to every key, so several gateways (or tests)
	// can share a server. It must not contain '{' or '}', which would
	// change the keys' hash slot. Default: "".
	KeyPrefix string

	// InstanceID names this Tracker's entries and lease. It must be unique
	// among the Trackers sharing KeyPrefix, in every process (a process
	// with two cursor rules needs two), and stable for the Tracker's life.
	// Required.
	InstanceID string

	// Timeout is the deadline of the Tracker's own Redis calls (a sweep's
	// round trip). Update, UpdateMany, Remove and List use the caller's
	// ctx. Default: DefaultRedisTimeout.
	Timeout time.Duration

	// OnError is called with every failure the caller cannot see: a failed
	// sweep, a panic in OnExpire. It must not block. Default: nil.
	OnError func(err error)
}

// Redis is the Tracker of a gateway cluster sharing one Redis server (or
// one Redis Cluster: each topic's keys share the {topic} hash slot). It
// needs Redis 7.0.
//
// # Data
//
// A topic t has two keys, with p the KeyPrefix:
//
//	p cursor:{t}         hash key → "<len(inst)>:<inst><len(user)>:<user><data>"
//	p cursor:{t}:leases  hash instance id → lease expiry, ms by the Redis clock
//
// An entry is live while the instance that wrote it holds an unexpired
// lease on the topic: expiry is per instance and topic, not per entry, so
// an idle cursor of a live connection never expires, and renewing costs
// one field per topic. Both keys expire 2×TTL after the last renewal by
// any instance, so a topic every instance left (or a dead instance's
// entries nobody swept) leaves nothing behind. Update and UpdateMany write their entries and renew
// the lease in one script run (redis_update.lua), with TIME from the
// script, never an instance's clock. Remove is one HDEL. List is one
// read-only script run (redis_list.lua) that skips the entries of expired
// leases, and returns every instance's live entries.
//
// # Expiry
//
// Every TTL/3 a sweeper goroutine runs, in one pipelined round trip, a
// sweep script (redis_sweep.lua) per topic this instance has written or
// listed: it renews this instance's lease where it has entries, deletes
// the entries of expired leases and those leases, and returns the keys it
// deleted. Since Redis runs each sweep atomically, every expired entry is
// deleted, and handed to OnExpire, by exactly one instance, whichever
// swept it first; the gateway there publishes the remove frames for the
// whole cluster (docs/protocol.md §6.2). A crashed instance's entries are
// removed within TTL plus TTL/3 of its last renewal.
//
// A topic with no entry and none of this instance's is forgotten
// forgetAfter (10 minutes) after this instance last wrote or listed it.
// The gateway lists a topic when a connection attaches, so an instance
// keeps sweeping the topics its connections watch while they are in use;
// but if a connection watches a topic that stays empty longer than that,
// and entries then appear only from another instance that crashes, no
// live instance sweeps the topic and the remove frames are not sent
// (the next List, which filters the dead entries, starts sweeping it
// again). Unlike presence, cursor moves do not pass through the Tracker,
// so it cannot follow topics from other instances' changes.
//
// Live updates between instances are not this package's job: the gateway
// relays update and bulk frames on its bus. An instance paused beyond the
// TTL loses its entries (their removes are published) until its
// connections move again.
//
// Goroutines: 1 (the sweeper), plus one that waits for it; Close stops it.
type Redis struct {
	client   rueidis.Client
	prefix   string
	id       string
	idTag    string // "<len(id)>:<id>", how this instance's values start
	ttl      string // ARGV: TTL in milliseconds
	interval time.Duration
	timeout  time.Duration
	onExpire ExpireFunc
	onError  func(error)

	ctx    context.Context // canceled by Close; ends the sweeper
	cancel context.CancelFunc
	wg     sync.WaitGroup
	exited chan struct{}

	mu     sync.Mutex // guards topics and closed
	topics map[string]*topicState
	closed bool

	sweeps atomic.Uint64 // sweeps completed, for tests

	closeOnce sync.Once
	releaseMu sync.Mutex
	released  bool
}

// topicState is what this instance knows of a topic it sweeps.
type topicState struct {
	keys    map[string]struct{} // this instance's entries there
	touched time.Time           // when this instance last wrote or listed it
}

// NewRedis returns a Tracker on client configured by cfg. It sends
// nothing: an unreachable server shows in the first call. The caller must
// Close it, which stops its sweeper; the caller keeps ownership of client
// and closes it after.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	switch {
	case client == nil:
		return nil, errors.New("cursor: no Redis client")
	case cfg.InstanceID == "":
		return nil, errors.New("cursor: an instance id is required")
	case strings.ContainsAny(cfg.KeyPrefix, "{}"):
		return nil, fmt.Errorf("cursor: key prefix %q contains '{' or '}', which would put keys of different topics in one Redis Cluster slot", cfg.KeyPrefix)
	case cfg.Timeout < 0:
		return nil, errors.New("cursor: negative timeout")
	}
	c := cfg.Config.WithDefaults()
	r := &Redis{
		client:   client,
		prefix:   cfg.KeyPrefix,
		id:       cfg.InstanceID,
		idTag:    strconv.Itoa(len(cfg.InstanceID)) + ":" + cfg.InstanceID,
		ttl:      strconv.FormatInt(max(1, c.TTL.Milliseconds()), 10),
		interval: max(time.Millisecond, c.TTL/3),
		timeout:  cfg.Timeout,
		onExpire: c.OnExpire,
		onError:  cfg.OnError,
		exited:   make(chan struct{}),
		topics:   make(map[string]*topicState),
	}
	if r.timeout == 0 {
		r.timeout = DefaultRedisTimeout
	}
	if r.onError == nil {
		r.onError = func(error) {}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.sweepLoop()
	go func() {
		r.wg.Wait()
		close(r.exited)
	}()
	return r, nil
}

// keys returns topic's entries and leases keys. The hash tag {topic} puts
// both in one slot; keys of distinct topics never collide, as the entries
// key ends with '}' and the leases key with "}:leases".
func (r *Redis) keys(topic string) []string {
	base := r.prefix + "cursor:{" + topic + "}"
	return []string{base, base + ":leases"}
}

var _ ManyUpdater = (*Redis)(nil)

// Update implements Tracker with one script run, like UpdateMany.
func (r *Redis) Update(ctx context.Context, topic string, e Entry) error {
	return r.UpdateMany(ctx, topic, []Entry{e})
}

// UpdateMany sets every entry of es on topic, as Update does each, in one
// script run: one round trip for a topic's flush, however many entries it
// carries. Should es hold a key twice, the last one wins. It keeps copies
// of the entries' bytes.
func (r *Redis) UpdateMany(ctx context.Context, topic string, es []Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(es) == 0 {
		return nil
	}
	args := make([]string, 0, 2+2*len(es))
	args = append(args, r.id, r.ttl)
	for _, e := range es {
		args = append(args, e.Key, r.value(e))
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	st := r.topicLocked(topic)
	for _, e := range es {
		st.keys[e.Key] = struct{}{}
	}
	r.mu.Unlock()
	if err := updateScript.Exec(ctx, r.client, r.keys(topic), args).Error(); err != nil {
		return fmt.Errorf("cursor: updating %d entries on %q: %w", len(es), topic, err)
	}
	return nil
}

// value encodes e's stored value, "<len(inst)>:<inst><len(user)>:<user><data>":
// the length prefixes keep user and data byte for byte whatever they hold.
func (r *Redis) value(e Entry) string {
	n := strconv.Itoa(len(e.User))
	var b strings.Builder
	b.Grow(len(r.idTag) + len(n) + 1 + len(e.User) + len(e.Data))
	b.WriteString(r.idTag)
	b.WriteString(n)
	b.WriteByte(':')
	b.Write(e.User)
	b.Write(e.Data)
	return b.String()
}

// topicLocked returns topic's state, adding the topic to the swept ones
// and marking it touched. Called with r.mu held.
func (r *Redis) topicLocked(topic string) *topicState {
	st := r.topics[topic]
	if st == nil {
		st = &topicState{keys: make(map[string]struct{})}
		r.topics[topic] = st
	}
	st.touched = time.Now()
	return st
}

// Remove implements Tracker with one HDEL.
func (r *Redis) Remove(ctx context.Context, topic, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if st := r.topics[topic]; st != nil {
		delete(st.keys, key)
	}
	r.mu.Unlock()
	if err := r.client.Do(ctx, r.client.B().Hdel().Key(r.keys(topic)[0]).Field(key).Build()).Error(); err != nil {
		return fmt.Errorf("cursor: removing an entry from %q: %w", topic, err)
	}
	return nil
}

// List implements Tracker with one read-only script run. The topic joins
// those this instance sweeps, so that its attached connections hear of
// crashed instances' entries expiring, until it has no entry.
func (r *Redis) List(ctx context.Context, topic string) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	r.topicLocked(topic)
	r.mu.Unlock()
	flat, err := listScript.Exec(ctx, r.client, r.keys(topic), nil).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("cursor: listing %q: %w", topic, err)
	}
	if len(flat)%2 != 0 {
		return nil, fmt.Errorf("cursor: listing %q: %w", topic, errMalformed)
	}
	out := make([]Entry, 0, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		e, ok := parseEntry(flat[i], flat[i+1])
		if !ok {
			return nil, fmt.Errorf("cursor: listing %q: %w", topic, errMalformed)
		}
		out = append(out, e)
	}
	return out, nil
}

var errMalformed = errors.New("malformed script reply or entry")

// parseEntry decodes a stored value, "<len(inst)>:<inst><len(user)>:<user><data>".
// It never panics, whatever another program wrote into the hash.
func parseEntry(key, v string) (Entry, bool) {
	var user string
	for i := range 2 { // skip the instance, then take the user
		c := strings.IndexByte(v, ':')
		if c < 0 {
			return Entry{}, false
		}
		n, err := strconv.Atoi(v[:c])
		if err != nil || n < 0 || n > len(v)-c-1 {
			return Entry{}, false
		}
		if i == 1 {
			user = v[c+1 : c+1+n]
		}
		v = v[c+1+n:]
	}
	e := Entry{Key: key}
	if user != "" {
		e.User = json.RawMessage(user)
	}
	if v != "" {
		e.Data = json.RawMessage(v)
	}
	return e, true
}

// sweepLoop sweeps every r.interval until Close.
func (r *Redis) sweepLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.safely("sweep", r.sweep)
		}
	}
}

// safely runs f, reporting a panic to OnError with its stack, so that a
// bug in one sweep or OnExpire does not end the sweeper.
func (r *Redis) safely(what string, f func()) {
	defer func() {
		if p := recover(); p != nil {
			r.onError(fmt.Errorf("cursor: %s panicked (continuing): %v\n%s", what, p, debug.Stack()))
		}
	}()
	f()
}

// sweep runs the sweep script on every known topic in one round trip and
// reports what it deleted.
func (r *Redis) sweep() {
	r.mu.Lock()
	names := make([]string, 0, len(r.topics))
	own := make([]bool, 0, len(r.topics))
	for name, st := range r.topics {
		names = append(names, name)
		own = append(own, len(st.keys) > 0)
	}
	r.mu.Unlock()
	if len(names) == 0 {
		r.sweeps.Add(1)
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	execs := make([]rueidis.LuaExec, len(names))
	for i, name := range names {
		renew := "0"
		if own[i] {
			renew = "1"
		}
		execs[i] = rueidis.LuaExec{Keys: r.keys(name), Args: []string{r.id, r.ttl, renew}}
	}
	var (
		empty    []string
		failed   int
		firstErr error
	)
	for i, res := range sweepScript.ExecMulti(ctx, r.client, execs...) {
		arr, err := res.ToArray()
		var left int64
		if err == nil {
			if len(arr) == 0 {
				err = errMalformed
			} else {
				left, err = arr[0].AsInt64()
			}
		}
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if len(arr) > 1 && r.onExpire != nil {
			keys := make([]string, 0, len(arr)-1)
			for _, m := range arr[1:] {
				if k, err := m.ToString(); err == nil {
					keys = append(keys, k)
				}
			}
			r.safely("OnExpire", func() { r.onExpire(names[i], keys) })
		}
		if left == 0 {
			empty = append(empty, names[i])
		}
	}
	if failed > 0 {
		r.onError(fmt.Errorf("cursor: sweep failed on %d of %d topics (this instance's entries expire if it keeps failing for the TTL): %w", failed, len(names), firstErr))
	}
	if len(empty) > 0 {
		r.mu.Lock()
		now := time.Now()
		for _, name := range empty {
			if st := r.topics[name]; st != nil && len(st.keys) == 0 && now.Sub(st.touched) >= forgetAfter {
				delete(r.topics, name)
			}
		}
		r.mu.Unlock()
	}
	r.sweeps.Add(1)
}

// Close stops the sweeper, waiting for it until ctx ends, then expires
// this instance's leases in one round trip: the other instances' next
// sweeps remove its remaining entries and report them to their OnExpire,
// so a graceful stop is seen within TTL/3, not after the TTL. OnExpire is
// not called after Close returns; the other methods return ErrClosed.
// Close is idempotent; a Close whose ctx ended before the expiry may be
// called again to retry it. It leaves the client open.
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
		return fmt.Errorf("cursor: waiting for the redis tracker to stop: %w", ctx.Err())
	}
	r.releaseMu.Lock()
	defer r.releaseMu.Unlock()
	if r.released {
		return nil
	}
	r.mu.Lock()
	var cmds rueidis.Commands
	for name, st := range r.topics {
		if len(st.keys) > 0 {
			cmds = append(cmds, r.client.B().Hset().Key(r.keys(name)[1]).FieldValue().FieldValue(r.id, "0").Build())
		}
	}
	r.mu.Unlock()
	for _, res := range r.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return fmt.Errorf("cursor: expiring this instance's leases (its entries expire after the TTL): %w", err)
		}
	}
	r.released = true
	return nil
}

// Interface guards
var (
	_ Tracker = (*Redis)(nil)
	_ Closer  = (*Redis)(nil)
)
