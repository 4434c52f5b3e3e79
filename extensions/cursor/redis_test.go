package cursor

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// TestMain fails the run when a goroutine of this package outlives the
// tests: every Redis Tracker must stop its sweeper when closed (docs/design.md,
// conventions §5).
func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/cursor.") }

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

// spread is one Tracker made of several instances: a key's calls go to
// the instance its key hashes to, as a connection lives on one instance,
// and List takes turns. The conformance suite run on it checks that the
// instances agree through Redis.
type spread struct {
	trs  []Tracker
	turn atomic.Uint32
}

func (s *spread) of(key string) Tracker {
	h := fnv.New32a()
	h.Write([]byte(key))
	return s.trs[h.Sum32()%uint32(len(s.trs))]
}

func (s *spread) Update(ctx context.Context, topic string, e Entry) error {
	return s.of(e.Key).Update(ctx, topic, e)
}

func (s *spread) Remove(ctx context.Context, topic, key string) error {
	return s.of(key).Remove(ctx, topic, key)
}

func (s *spread) List(ctx context.Context, topic string) ([]Entry, error) {
	return s.trs[s.turn.Add(1)%uint32(len(s.trs))].List(ctx, topic)
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
		{"a key prefix with a brace", client, RedisConfig{InstanceID: "a", KeyPrefix: "x{"}},
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

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		ok          bool
		user, data  string
	}{
		{"user and data", `2:ab11:{"id":"u1"}{"x":1}`, true, `{"id":"u1"}`, `{"x":1}`},
		{"no data", `2:ab10:{"id":"u"}`, true, `{"id":"u"}`, ""},
		{"no user, no data", `2:ab0:`, true, "", ""},
		{"a user holding colons and digits", `1:i7:{"a":1}[2]`, true, `{"a":1}`, `[2]`},
		{"no instance length", `i10:`, false, "", ""},
		{"an instance longer than the value", `9:i`, false, "", ""},
		{"a user longer than the value", `2:ab19:{}`, false, "", ""},
		{"a negative length", `2:ab-1:`, false, "", ""},
		{"empty", ``, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := parseEntry("k", tc.value)
			if ok != tc.ok || (ok && (string(e.User) != tc.user || string(e.Data) != tc.data || e.Key != "k")) {
				t.Fatalf("parseEntry(%q) = %q %s %s, %v; want %s %s, %v", tc.value, e.Key, e.User, e.Data, ok, tc.user, tc.data, tc.ok)
			}
		})
	}
}

// expiries collects what an OnExpire receives.
type expiries struct {
	mu   sync.Mutex
	keys []string // "topic key"
}

func (x *expiries) onExpire(topic string, keys []string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, k := range keys {
		x.keys = append(x.keys, topic+" "+k)
	}
}

func (x *expiries) got() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Sorted(slices.Values(x.keys))
}

// waitSweeps waits until each tracker has completed n more sweeps.
func waitSweeps(t testing.TB, n uint64, trs ...*Redis) {
	t.Helper()
	start := make([]uint64, len(trs))
	for i, tr := range trs {
		start[i] = tr.sweeps.Load()
	}
	testsvc.WaitFor(t, 10*time.Second, fmt.Sprintf("%d sweeps", n), func() bool {
		for i, tr := range trs {
			if tr.sweeps.Load() < start[i]+n {
				return false
			}
		}
		return true
	})
}

func TestRedisExpiryIsReportedOnce(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	cc := testsvc.Connect(t, testsvc.RedisAddr())
	cfg := Config{TTL: 300 * time.Millisecond}
	var xa, xb expiries
	cfgA, cfgB := cfg, cfg
	cfgA.OnExpire, cfgB.OnExpire = xa.onExpire, xb.onExpire
	a := newRedisTracker(t, ca, prefix, cfgA)
	b := newRedisTracker(t, cb, prefix, cfgB)
	crashing, err := NewRedis(cc, RedisConfig{Config: cfg, KeyPrefix: prefix, InstanceID: "crashing"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = crashing.Close(context.Background()) }) // fails: its client is gone

	mustUpdate(t, crashing, "canvas", entry("c7", `{"id":"u1"}`, `{"x":1}`))
	mustUpdate(t, crashing, "canvas", entry("c8", `{"id":"u2"}`, `{"x":2}`))
	mustUpdate(t, a, "canvas", entry("c1", `{"id":"u3"}`, `{"x":3}`))
	// b only reads the topic, as an instance with attached connections.
	expectEntries(t, b, "canvas", entry("c7", `{"id":"u1"}`, `{"x":1}`), entry("c8", `{"id":"u2"}`, `{"x":2}`), entry("c1", `{"id":"u3"}`, `{"x":3}`))

	cc.Close() // a crash: no more renewals, nothing removed
	crashed := time.Now()
	want := []string{"canvas c7", "canvas c8"}
	testsvc.WaitFor(t, 5*time.Second, "the expiry", func() bool { return len(xa.got())+len(xb.got()) == len(want) })
	t.Logf("expired %v after the crash (TTL %v, sweeps every %v)", time.Since(crashed).Round(time.Millisecond), cfg.TTL, cfg.TTL/3)
	// More sweeps by both change nothing: each expiry was reported once.
	waitSweeps(t, 3, a, b)
	if got := slices.Sorted(slices.Values(append(xa.got(), xb.got()...))); !slices.Equal(got, want) {
		t.Fatalf("OnExpire received %v (a) and %v (b); want %v once in all", xa.got(), xb.got(), want)
	}
	t.Logf("reported by a: %v, by b: %v", xa.got(), xb.got())
	expectEntries(t, b, "canvas", entry("c1", `{"id":"u3"}`, `{"x":3}`))
}

func TestRedisLiveEntriesOutliveTheTTL(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	var x expiries
	cfg := Config{TTL: 300 * time.Millisecond, OnExpire: x.onExpire}
	a := newRedisTracker(t, ca, prefix, cfg)
	b := newRedisTracker(t, cb, prefix, cfg)
	mustUpdate(t, a, "canvas", entry("c7", `{}`, `{"x":1}`))
	expectEntries(t, b, "canvas", entry("c7", `{}`, `{"x":1}`))
	// Ten sweeps of both: a second, over three TTLs, of an idle cursor.
	waitSweeps(t, 10, a, b)
	expectEntries(t, b, "canvas", entry("c7", `{}`, `{"x":1}`))
	if got := x.got(); len(got) != 0 {
		t.Fatalf("OnExpire received %v for a live instance's entry", got)
	}
}

func TestRedisUpdateMany(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	tr := newRedisTracker(t, client, prefix, Config{})
	ctx := context.Background()
	es := []Entry{
		entry("c1", `{"id":"u1"}`, `{"x":1}`),
		entry("c2", `{"id":"u2"}`, ""),
		entry("c3", `{ "id" : "u3" }`, `[1, 2]`),
		entry("c1", `{"id":"u1"}`, `{"x":9}`), // the last of a key wins
	}
	if err := tr.UpdateMany(ctx, "canvas", es); err != nil {
		t.Fatalf("UpdateMany: %v", err)
	}
	expectEntries(t, tr, "canvas", es[1], es[2], es[3])
	if err := tr.UpdateMany(ctx, "canvas", nil); err != nil {
		t.Fatalf("UpdateMany of nothing: %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.UpdateMany(canceled, "canvas", es[:1]); err == nil {
		t.Fatal("UpdateMany with a canceled context returned no error")
	}
	if err := tr.UpdateMany(ctx, "board", es[:3]); err != nil {
		t.Fatal(err)
	}
	expectEntries(t, tr, "board", es[:3]...)
}

func TestRedisListAcrossInstances(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	a := newRedisTracker(t, ca, prefix, Config{})
	b := newRedisTracker(t, cb, prefix, Config{})
	mustUpdate(t, a, "canvas", entry("c1", `{"id":"u1"}`, `{"x":1}`))
	if err := b.UpdateMany(context.Background(), "canvas", []Entry{entry("c2", `{"id":"u2"}`, `{"x":2}`), entry("c3", `{"id":"u3"}`, `{"x":3}`)}); err != nil {
		t.Fatal(err)
	}
	all := []Entry{entry("c1", `{"id":"u1"}`, `{"x":1}`), entry("c2", `{"id":"u2"}`, `{"x":2}`), entry("c3", `{"id":"u3"}`, `{"x":3}`)}
	expectEntries(t, a, "canvas", all...)
	expectEntries(t, b, "canvas", all...)
	// Any instance may remove any key: keys are cluster-unique.
	mustRemove(t, a, "canvas", "c2")
	expectEntries(t, b, "canvas", all[0], all[2])
}

func TestRedisCloseExpiresItsEntries(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb := testsvc.Connect(t, testsvc.RedisAddr())
	var x expiries
	a, err := NewRedis(ca, RedisConfig{KeyPrefix: prefix, InstanceID: "closing"})
	if err != nil {
		t.Fatal(err)
	}
	b := newRedisTracker(t, cb, prefix, Config{TTL: 300 * time.Millisecond, OnExpire: x.onExpire})
	mustUpdate(t, a, "canvas", entry("c7", `{}`, `{"x":1}`))
	mustUpdate(t, b, "canvas", entry("c1", `{}`, `{"x":2}`))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := a.Update(ctx, "canvas", entry("c9", `{}`, `{}`)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close returned %v, want ErrClosed", err)
	}
	// At once, as its lease expired: not after a's 30 s TTL.
	expectEntries(t, b, "canvas", entry("c1", `{}`, `{"x":2}`))
	testsvc.WaitFor(t, 5*time.Second, "the closed instance's expiry", func() bool { return len(x.got()) == 1 })
	if got := x.got(); got[0] != "canvas c7" {
		t.Fatalf("OnExpire received %v, want [canvas c7]", got)
	}
}

func TestRedisLeftTopicsLeaveNoKeys(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	tr := newRedisTracker(t, client, prefix, Config{TTL: 200 * time.Millisecond})
	mustUpdate(t, tr, "canvas", entry("c7", `{}`, `{"x":1}`))
	mustRemove(t, tr, "canvas", "c7")
	// The lease outlives the last entry until a sweep reaps it or the
	// key expires, 2×TTL after the last renewal.
	keys := tr.keys("canvas")
	testsvc.WaitFor(t, 5*time.Second, "the topic's keys gone", func() bool {
		n, err := client.Do(context.Background(), client.B().Exists().Key(keys...).Build()).AsInt64()
		return err == nil && n == 0
	})
}

// BenchmarkRedisUpdateMany_10 measures a topic's flush of 10 entries.
func BenchmarkRedisUpdateMany_10(b *testing.B) {
	client, prefix := testsvc.Redis(b)
	tr := newRedisTracker(b, client, prefix, Config{})
	es := make([]Entry, 10)
	for i := range es {
		es[i] = entry(fmt.Sprintf("c%d", i), `{"id":"u","name":"Ann"}`, `{"x":120,"y":480}`)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := tr.UpdateMany(ctx, "canvas", es); err != nil {
			b.Fatal(err)
		}
	}
}
