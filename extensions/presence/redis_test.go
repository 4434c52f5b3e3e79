package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// TestMain fails the run when a goroutine of this package outlives the
// tests: every Redis Tracker must stop what it started when closed
// (docs/design.md, conventions §5).
func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/presence.") }

var instanceSerial atomic.Int64

// newRedisTracker starts a Tracker on client under prefix as a new
// instance, closed in t.Cleanup (before the client, whose cleanup was
// registered first).
func newRedisTracker(t testing.TB, client rueidis.Client, prefix string, cfg Config) *Redis {
	t.Helper()
	r, err := NewRedis(client, RedisConfig{
		Config:     cfg,
		KeyPrefix:  prefix,
		InstanceID: fmt.Sprintf("inst-%d", instanceSerial.Add(1)),
		OnError:    logErrors(t),
	})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// logErrors reports a tracker's errors in the test log, which -v shows.
func logErrors(t testing.TB) func(error) {
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) })
	return func(err error) {
		if !done.Load() {
			t.Logf("OnError: %v", err)
		}
	}
}

// spread is one Tracker made of several instances: a connection's calls go
// to the instance its id hashes to, as a connection lives on one
// instance, and List and Count take turns. The conformance suite run on it
// checks that the instances agree through Redis.
type spread struct {
	trs  []Tracker
	turn atomic.Uint32
}

func (s *spread) of(connID string) Tracker {
	h := fnv.New32a()
	h.Write([]byte(connID))
	return s.trs[h.Sum32()%uint32(len(s.trs))]
}

func (s *spread) next() Tracker { return s.trs[s.turn.Add(1)%uint32(len(s.trs))] }

func (s *spread) Join(ctx context.Context, topic, key, connID string, data json.RawMessage) (Change, error) {
	return s.of(connID).Join(ctx, topic, key, connID, data)
}

func (s *spread) Leave(ctx context.Context, topic, key, connID string) (Change, error) {
	return s.of(connID).Leave(ctx, topic, key, connID)
}

func (s *spread) List(ctx context.Context, topic string) ([]Member, error) {
	return s.next().List(ctx, topic)
}

func (s *spread) Count(ctx context.Context, topic string) (int, error) {
	return s.next().Count(ctx, topic)
}

func TestRedis(t *testing.T) {
	testTracker(t, func(t *testing.T, cfg Config) Tracker {
		client, prefix := testsvc.Redis(t)
		return newRedisTracker(t, client, prefix, cfg)
	})
}

func TestRedisTwoInstances(t *testing.T) {
	testTracker(t, func(t *testing.T, cfg Config) Tracker {
		ca, prefix := testsvc.Redis(t)
		cb := testsvc.Connect(t, testsvc.RedisAddr())
		return &spread{trs: []Tracker{newRedisTracker(t, ca, prefix, cfg), newRedisTracker(t, cb, prefix, cfg)}}
	})
}

func TestNewRedisRefusesBadConfig(t *testing.T) {
	client, _ := testsvc.Redis(t)
	for _, tc := range []struct {
		name   string
		client rueidis.Client
		cfg    RedisConfig
	}{
		{"no client", nil, RedisConfig{InstanceID: "a"}},
		{"no instance id", client, RedisConfig{}},
		{"an instance id with a brace", client, RedisConfig{InstanceID: "a}b"}},
		{"a key prefix with a brace", client, RedisConfig{InstanceID: "a", KeyPrefix: "{x}"}},
		{"a heartbeat not below the TTL", client, RedisConfig{InstanceID: "a", Config: Config{TTL: time.Second, Refresh: time.Second}}},
		{"a negative timeout", client, RedisConfig{InstanceID: "a", Timeout: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := NewRedis(tc.client, tc.cfg); err == nil {
				_ = r.Close(context.Background())
				t.Fatal("NewRedis succeeded")
			}
		})
	}
}

func TestNewRedisFailsWithoutASubscription(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	srv.Kill()
	r, err := NewRedis(client, RedisConfig{InstanceID: "a", Timeout: 200 * time.Millisecond, Config: Config{OnChange: func([]Change) {}}})
	if err == nil {
		_ = r.Close(context.Background())
		t.Fatal("NewRedis succeeded with Redis down")
	}
	if !strings.Contains(err.Error(), "did not confirm the subscription") {
		t.Fatalf("NewRedis returned %v, want a subscription error", err)
	}
}

// With StartUnreachable a Tracker starts while Redis is down, says it is
// unreachable, and works once Redis appears: its subscription confirmed,
// joins and other instances' changes going through.
func TestRedisStartsUnreachable(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	srv.Kill()
	rec := &recorder{}
	r, err := NewRedis(client, RedisConfig{InstanceID: "a", Timeout: 200 * time.Millisecond, StartUnreachable: true,
		Config: Config{OnChange: rec.onChange}, OnError: logErrors(t)})
	if err != nil {
		t.Fatalf("NewRedis with Redis down and StartUnreachable: %v", err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	if r.Reachable() {
		t.Fatal("Reachable with Redis down")
	}
	if _, err := r.Join(context.Background(), "room", "k", "c1", nil); err == nil {
		t.Fatal("Join succeeded with Redis down")
	}
	srv.Restart()
	testsvc.WaitFor(t, 10*time.Second, "the subscription after Redis came back", r.Reachable)
	b := newRedisTracker(t, testsvc.Connect(t, srv.Addr()), "", Config{})
	mustJoin(t, r, "room", "alice", "c1", `{"n":1}`)
	mustJoin(t, b, "room", "bob", "c2", `{"n":2}`)
	testsvc.WaitFor(t, 5*time.Second, "bob's join from the other instance", func() bool { return len(rec.on("room")) == 1 })
	expectChanges(t, rec, "room", `joined bob {"n":2}`)
}

// The reference Node package's clear() deletes "presence:*" on its Redis:
// a gateway sharing that Redis keeps its members.
func TestRedisKeysSurviveTheReferencePackagesClear(t *testing.T) {
	client, _ := testsvc.Redis(t)
	tr := newRedisTracker(t, client, "", Config{})
	topic := "clear-" + uuid.NewString()
	mustJoin(t, tr, topic, "alice", "c1", `{}`)
	ctx := context.Background()
	keys, err := client.Do(ctx, client.B().Keys().Pattern("*"+topic+"*").Build()).AsStrSlice()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys of %s: %v %v", topic, keys, err)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "presence:") {
			t.Errorf("key %q is under the reference package's presence:*", k)
		}
	}
	stale, err := client.Do(ctx, client.B().Keys().Pattern("presence:*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range stale {
		_ = client.Do(ctx, client.B().Del().Key(k).Build()).Error()
	}
	if ms, err := tr.List(ctx, topic); err != nil || len(ms) != 1 || ms[0].Key != "alice" {
		t.Fatalf("after deleting presence:*, List = %v, %v; want alice", ms, err)
	}
	if got := DefaultRedisChannel; strings.HasPrefix(got, "presence:") {
		t.Errorf("default channel %q is the reference package's", got)
	}
}

// recorder collects the changes an OnChange receives.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) onChange(changes []Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, changes...)
}

// on returns the changes received on topic, as "kind key data" strings.
func (r *recorder) on(topic string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.changes {
		if c.Topic == topic {
			out = append(out, fmt.Sprintf("%v %s %s", c.Kind, c.Member.Key, c.Member.Data))
		}
	}
	return out
}

// sync makes sure every change a published before now has reached rec:
// a's change on a barrier topic travels behind them on the channel.
func syncWith(t testing.TB, a Tracker, rec *recorder) {
	t.Helper()
	key := uuid.NewString()
	mustJoin(t, a, "barrier", key, key, `{}`)
	testsvc.WaitFor(t, 5*time.Second, "the barrier change", func() bool {
		for _, c := range rec.on("barrier") {
			if strings.Contains(c, key) {
				return true
			}
		}
		return false
	})
}

func expectChanges(t testing.TB, rec *recorder, topic string, want ...string) {
	t.Helper()
	got := rec.on(topic)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("OnChange received on %q:\n%s\nwant:\n%s", topic, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRedisTwoInstancesOneKey(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	var recA, recB recorder
	a := newRedisTracker(t, ca, prefix, Config{OnChange: recA.onChange})
	b := newRedisTracker(t, cb, prefix, Config{OnChange: recB.onChange})
	// Odd spacing and a number beyond float64 survive the events too.
	const data = `{ "id":"u1", "n":9007199254740993 }`

	expectChange(t, mustJoin(t, a, "room", "u1", "c1", data), Joined, "room", "u1", data)
	expectChange(t, mustJoin(t, b, "room", "u1", "c2", data), NoChange, "room", "u1", data)
	expectPresent(t, a, "room", map[string]string{"u1": data})
	expectChange(t, mustLeave(t, a, "room", "u1", "c1"), NoChange, "room", "u1", data)
	expectPresent(t, b, "room", map[string]string{"u1": data})
	expectChange(t, mustLeave(t, b, "room", "u1", "c2"), Left, "room", "u1", data)
	expectPresent(t, a, "room", nil)

	syncWith(t, a, &recB)
	syncWith(t, b, &recA)
	expectChanges(t, &recB, "room", "joined u1 "+data)
	expectChanges(t, &recA, "room", "left u1 "+data)
}

func TestRedisRemoteUpdate(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	var recA recorder
	a := newRedisTracker(t, ca, prefix, Config{OnChange: recA.onChange})
	b := newRedisTracker(t, cb, prefix, Config{})
	mustJoin(t, a, "room", "u1", "c1", `{"v":1}`)
	expectChange(t, mustJoin(t, b, "room", "u1", "c2", `{"v":2}`), Updated, "room", "u1", `{"v":2}`)
	// A member without data travels as null, which is nil again.
	expectChange(t, mustJoin(t, b, "room", "u2", "c3", ""), Joined, "room", "u2", "")
	syncWith(t, b, &recA)
	expectChanges(t, &recA, "room", `updated u1 {"v":2}`, "joined u2 ")
	expectPresent(t, a, "room", map[string]string{"u1": `{"v":2}`, "u2": ""})
}

func TestRedisCrashedInstanceLeaves(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	cfg := Config{TTL: 600 * time.Millisecond, Refresh: 150 * time.Millisecond}
	var recA recorder
	live := cfg
	live.OnChange = recA.onChange
	a := newRedisTracker(t, ca, prefix, live)
	crashing, err := NewRedis(cb, RedisConfig{Config: cfg, KeyPrefix: prefix, InstanceID: "crashing", OnError: logErrors(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = crashing.Close(context.Background()) }) // fails: its client is gone

	const ann, bo = `{"id":"u1"}`, `{"id":"u2"}`
	mustJoin(t, crashing, "room", "u1", "c1", ann)
	mustJoin(t, crashing, "room", "u2", "c2", bo)
	mustJoin(t, a, "room", "u2", "c3", bo) // u2 stays through a
	syncWith(t, crashing, &recA)
	expectChanges(t, &recA, "room", "joined u1 "+ann, "joined u2 "+bo)

	// A crash: the client goes, the heartbeats stop, nothing is removed.
	cb.Close()
	crashed := time.Now()
	testsvc.WaitFor(t, cfg.TTL+cfg.Refresh+time.Second, "the crashed member's leave", func() bool { return len(recA.on("room")) == 3 })
	t.Logf("left %v after the crash (TTL %v + heartbeat %v)", time.Since(crashed).Round(time.Millisecond), cfg.TTL, cfg.Refresh)
	expectChanges(t, &recA, "room", "joined u1 "+ann, "joined u2 "+bo, "left u1 "+ann)
	expectPresent(t, a, "room", map[string]string{"u2": bo})
	expectChange(t, mustLeave(t, a, "room", "u2", "c3"), Left, "room", "u2", bo)
}

func TestRedisObserverHearsCrashedLeaves(t *testing.T) {
	// The survivor has no connection on the topic: it listed it while
	// empty, as the gateway does for an observer, and forgot it. The
	// crashed instance held every connection; the survivor follows the
	// topic from the join it heard of, reaps it and hears the leave.
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	cfg := Config{TTL: 400 * time.Millisecond, Refresh: 100 * time.Millisecond}
	var recA recorder
	live := cfg
	live.OnChange = recA.onChange
	a := newRedisTracker(t, ca, prefix, live)
	crashing, err := NewRedis(cb, RedisConfig{Config: cfg, KeyPrefix: prefix, InstanceID: "crashing"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = crashing.Close(context.Background()) }) // fails: its client is gone
	forgotten := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.topics) == 0
	}
	expectPresent(t, a, "room", nil)
	testsvc.WaitFor(t, 5*time.Second, "the empty topic forgotten", forgotten)

	mustJoin(t, crashing, "room", "u1", "c1", `{}`)
	testsvc.WaitFor(t, 5*time.Second, "the join", func() bool { return len(recA.on("room")) == 1 })
	cb.Close()
	testsvc.WaitFor(t, cfg.TTL+cfg.Refresh+time.Second, "the crashed member's leave", func() bool { return len(recA.on("room")) == 2 })
	expectChanges(t, &recA, "room", "joined u1 {}", "left u1 {}")
	expectPresent(t, a, "room", nil)
	testsvc.WaitFor(t, 5*time.Second, "the empty topic forgotten again", forgotten)
}

func TestRedisLiveMembersOutliveTheTTL(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	cfg := Config{TTL: 300 * time.Millisecond, Refresh: 100 * time.Millisecond}
	var recB recorder
	a := newRedisTracker(t, ca, prefix, cfg)
	watch := cfg
	watch.OnChange = recB.onChange
	b := newRedisTracker(t, cb, prefix, watch)
	mustJoin(t, a, "room", "u1", "c1", `{}`)
	expectPresent(t, b, "room", map[string]string{"u1": `{}`})
	// Ten of b's heartbeats, reaping the topic: a second, over three TTLs.
	start := b.beats.Load()
	testsvc.WaitFor(t, 5*time.Second, "ten heartbeats", func() bool { return b.beats.Load() >= start+10 })
	expectPresent(t, b, "room", map[string]string{"u1": `{}`})
	syncWith(t, a, &recB)
	expectChanges(t, &recB, "room", "joined u1 {}")
}

func TestRedisReapedInstanceJoinsAgain(t *testing.T) {
	// An instance paused beyond the TTL (here: its lease set to expired)
	// loses its connections to another's reap; its next heartbeat finds
	// fewer connections in Redis than it holds, and joins them again.
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	// Heartbeats far apart: the test runs a's by hand.
	slow := Config{TTL: time.Hour, Refresh: 20 * time.Minute}
	var recA, recB recorder
	slowA := slow
	slowA.OnChange = recA.onChange
	a := newRedisTracker(t, ca, prefix, slowA)
	slowB := slow
	slowB.OnChange = recB.onChange
	b := newRedisTracker(t, cb, prefix, slowB)

	mustJoin(t, a, "room", "u1", "c1", `{"v":1}`)
	mustJoin(t, a, "room", "u2", "c2", `{}`)
	mustJoin(t, b, "room", "u2", "c3", `{}`)
	leases := prefix + "rt:presence:{room}:leases"
	if err := ca.Do(context.Background(), ca.B().Hset().Key(leases).FieldValue().FieldValue(a.id, "0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	expectPresent(t, b, "room", map[string]string{"u2": `{}`}) // b's List reaps a
	a.beat()
	expectPresent(t, b, "room", map[string]string{"u1": `{"v":1}`, "u2": `{}`})
	// Both instances hear of the reap and of the repair, a included:
	// nobody's Join or Leave returned them.
	syncWith(t, b, &recA)
	syncWith(t, a, &recB)
	expectChanges(t, &recA, "room", `left u1 {"v":1}`, `joined u1 {"v":1}`)
	expectChanges(t, &recB, "room", `joined u1 {"v":1}`, "joined u2 {}", `left u1 {"v":1}`, `joined u1 {"v":1}`)
	// Everything is consistent again: the last leaves are the last.
	expectChange(t, mustLeave(t, a, "room", "u1", "c1"), Left, "room", "u1", `{"v":1}`)
	expectChange(t, mustLeave(t, a, "room", "u2", "c2"), NoChange, "room", "u2", `{}`)
	expectChange(t, mustLeave(t, b, "room", "u2", "c3"), Left, "room", "u2", `{}`)
}

func TestRedisFailedLeaveIsRepaired(t *testing.T) {
	// A Leave whose call fails, here as the server is gone, leaves the
	// connection in Redis; the next heartbeat that reaches Redis removes
	// it, unless the connection joined again meanwhile.
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	slow := Config{TTL: time.Hour, Refresh: 20 * time.Minute}
	a := newRedisTracker(t, client, "", slow)
	mustJoin(t, a, "room", "u1", "c1", `{}`)
	mustJoin(t, a, "room", "u2", "c2", `{}`)
	mustJoin(t, a, "room", "u3", "c3", `{}`)
	// Make the calls fail without losing the data: pause the server.
	pause := func() {
		t.Helper()
		if err := client.Do(context.Background(), client.B().ClientPause().Timeout(300).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	pause()
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	if _, err := a.Leave(short(), "room", "u1", "c1"); err == nil {
		t.Fatal("Leave succeeded on a paused server")
	}
	if _, err := a.Leave(short(), "room", "u2", "c2"); err == nil {
		t.Fatal("Leave succeeded on a paused server")
	}
	// The paused server may run the timed-out leaves after the pause, on
	// their connection, before or after the join below on another one:
	// whichever happens, heartbeats converge on the state the caller made.
	mustJoin(t, a, "room", "u2", "c2", `{}`)
	want := map[string]string{"u2": `{}`, "u3": `{}`}
	testsvc.WaitFor(t, 5*time.Second, "the repair", func() bool {
		a.beat()
		got := present(t, a, "room")
		return len(got) == len(want) && got["u2"] == want["u2"] && got["u3"] == want["u3"]
	})
	a.beat()
	expectPresent(t, a, "room", want)
	expectChange(t, mustLeave(t, a, "room", "u2", "c2"), Left, "room", "u2", `{}`)
}

func TestRedisCloseRemovesItsConnections(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	var recB recorder
	a, err := NewRedis(ca, RedisConfig{KeyPrefix: prefix, InstanceID: "closing"})
	if err != nil {
		t.Fatal(err)
	}
	b := newRedisTracker(t, cb, prefix, Config{OnChange: recB.onChange})
	mustJoin(t, a, "room", "u1", "c1", `{}`)
	mustJoin(t, a, "room", "u2", "c2", `{}`)
	mustJoin(t, b, "room", "u2", "c3", `{}`)
	mustJoin(t, a, "hall", "u3", "c4", `{}`)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := a.Join(ctx, "room", "u9", "c9", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Close returned %v, want ErrClosed", err)
	}
	expectPresent(t, b, "room", map[string]string{"u2": `{}`})
	expectPresent(t, b, "hall", nil)
	testsvc.WaitFor(t, 5*time.Second, "the closed instance's leaves", func() bool {
		return len(recB.on("room")) == 3 && len(recB.on("hall")) == 2
	})
	expectChanges(t, &recB, "room", "joined u1 {}", "joined u2 {}", "left u1 {}")
	expectChanges(t, &recB, "hall", "joined u3 {}", "left u3 {}")
}

func TestRedisAnonymousKeysNeverCollide(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	trs := []*Redis{newRedisTracker(t, ca, prefix, Config{}), newRedisTracker(t, cb, prefix, Config{})}
	const perInstance = 200
	var wg sync.WaitGroup
	for _, tr := range trs {
		wg.Go(func() {
			for range perInstance {
				// As the gateway names an anonymous connection's member.
				conn := uuid.NewString()
				c, err := tr.Join(context.Background(), "room", "__conn:"+conn, conn, json.RawMessage(`{}`))
				if err != nil || c.Kind != Joined {
					t.Errorf("Join: %v, %v; want joined", c.Kind, err)
				}
			}
		})
	}
	wg.Wait()
	if n, err := trs[0].Count(context.Background(), "room"); err != nil || n != 2*perInstance {
		t.Fatalf("Count = %d, %v; want %d", n, err, 2*perInstance)
	}
}

func TestRedisMassLeave(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	tr := newRedisTracker(t, client, prefix, Config{})
	const members, leaving, workers = 10_000, 1000, 32
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < members; i += workers {
				key := fmt.Sprintf("u%d", i)
				if _, err := tr.Join(ctx, "big", key, "c"+key, json.RawMessage(`{"id":"`+key+`"}`)); err != nil {
					t.Errorf("Join: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d joins by %d workers: %v", members, workers, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	for i := range leaving {
		wg.Go(func() {
			key := fmt.Sprintf("u%d", i)
			if c, err := tr.Leave(ctx, "big", key, "c"+key); err != nil || c.Kind != Left {
				t.Errorf("Leave %s: %v, %v; want left", key, c.Kind, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d concurrent leaves among %d members: %v", leaving, members, time.Since(start).Round(time.Millisecond))
	if n, err := tr.Count(ctx, "big"); err != nil || n != members-leaving {
		t.Fatalf("Count = %d, %v; want %d", n, err, members-leaving)
	}
}

// BenchmarkRedisJoinLeave measures a join and the leave of the same
// member from parallel goroutines: two script runs, two round trips.
func BenchmarkRedisJoinLeave(b *testing.B) {
	client, prefix := testsvc.Redis(b)
	tr := newRedisTracker(b, client, prefix, Config{})
	var workers atomic.Int64
	data := json.RawMessage(`{"id":"x","name":"Ann"}`)
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		conn := fmt.Sprintf("c%d", workers.Add(1))
		ctx := context.Background()
		for pb.Next() {
			if _, err := tr.Join(ctx, "room", conn, conn, data); err != nil {
				b.Error(err)
				return
			}
			if _, err := tr.Leave(ctx, "room", conn, conn); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "joinleave/s")
}
