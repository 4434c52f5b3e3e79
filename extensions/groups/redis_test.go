package groups

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// TestMain fails the run when a goroutine of this package outlives the
// tests: every Redis registry must stop its heartbeat on Close
// (docs/design.md, conventions §5).
func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/groups.") }

// newRedisRegistry returns a registry of instance on client, under prefix,
// shut down in t.Cleanup (before the client closes: cleanups run last
// registered first).
func newRedisRegistry(t testing.TB, client rueidis.Client, prefix, instance string, cfg Config) *Redis {
	t.Helper()
	r, err := NewRedis(client, RedisConfig{Config: cfg, KeyPrefix: prefix, InstanceID: instance})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// newRedisInstances returns n registries, instances "i0", "i1", …, each on
// a client of its own, sharing one key prefix.
func newRedisInstances(t testing.TB, n int, cfg Config) []*Redis {
	t.Helper()
	var (
		out    []*Redis
		prefix string
	)
	for i := range n {
		client, p := testsvc.Redis(t)
		if i == 0 {
			prefix = p
		}
		out = append(out, newRedisRegistry(t, client, prefix, "i"+strconv.Itoa(i), cfg))
	}
	return out
}

// crash stops r's heartbeat without removing its members, as a crash of
// its instance would.
func crash(r *Redis) {
	r.cancel()
	<-r.done
}

func TestRedis(t *testing.T) {
	testRegistry(t, func(t *testing.T, cfg Config) Registry {
		client, prefix := testsvc.Redis(t)
		return newRedisRegistry(t, client, prefix, "test", cfg)
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
		{"an instance id with the field separator", client, RedisConfig{InstanceID: "a|b"}},
		{"a key prefix with a hash tag", client, RedisConfig{InstanceID: "a", KeyPrefix: "{app}"}},
		{"a key prefix with a brace", client, RedisConfig{InstanceID: "a", KeyPrefix: "b}"}},
		{"a heartbeat as long as the TTL", client, RedisConfig{InstanceID: "a", Config: Config{TTL: time.Second, Refresh: time.Second}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := NewRedis(tc.client, tc.cfg); err == nil {
				_ = r.Close(context.Background())
				t.Fatal("NewRedis succeeded")
			}
		})
	}
}

func TestRedisKeysShareASlotPerGroup(t *testing.T) {
	r := &Redis{prefix: "p:"}
	for _, tc := range []struct {
		name, group string
		want        []string
	}{
		{"a plain name is the hash tag", "lobby", []string{"p:group:{lobby}:members", "p:group:{lobby}:closed", "p:group:{lobby}:meta"}},
		{"a '}' inside the name shortens the tag of every key alike", "a}b", []string{"p:group:{a}b}:members", "p:group:{a}b}:closed", "p:group:{a}b}:meta"}},
		{"an empty name would make an empty tag", "", []string{"p:group!{!}:members:", "p:group!{!}:closed:", "p:group!{!}:meta:"}},
		{"a name starting with '}' would make an empty tag", "}x", []string{"p:group!{!}:members:}x", "p:group!{!}:closed:}x", "p:group!{!}:meta:}x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := r.keys(tc.group)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("keys(%q) = %q, want %q", tc.group, got, tc.want)
			}
			for _, k := range got[1:] {
				if a, b := keySlot(got[0]), keySlot(k); a != b {
					t.Fatalf("%s and %s hash to slots %d and %d", got[0], k, a, b)
				}
			}
		})
	}
}

// keySlot is the Redis Cluster slot of key: CRC16 (XMODEM) of its hash
// tag, or of the whole key when it has none or an empty one.
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

func TestKeySlotMatchesRedis(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for key, want := range map[string]uint16{"123456789": 12739, "foo": 12182, "{user1000}.following": 3443, "foo{}{bar}": 8363} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
}

// Three instances are three clients: only the join script's atomicity on
// the server orders their joins.
func TestRedisConcurrentInstancesFillExactlyMaxMembers(t *testing.T) {
	const perInstance, maxMembers = 10, 10
	regs := newRedisInstances(t, 3, Config{})
	var (
		mu     sync.Mutex
		totals []int
		full   int
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for i, r := range regs {
		for j := range perInstance {
			wg.Go(func() {
				<-start
				c, err := r.Join(context.Background(), "lobby", fmt.Sprintf("c%d-%d", i, j), RoleMember, maxMembers)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case errors.Is(err, ErrFull):
					full++
				case err != nil:
					t.Errorf("Join: %v", err)
				default:
					totals = append(totals, c.Total())
				}
			})
		}
	}
	close(start)
	wg.Wait()
	slices.Sort(totals)
	want := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if !slices.Equal(totals, want) || full != 3*perInstance-maxMembers {
		t.Fatalf("joins saw totals %v and %d were full; want %v and %d", totals, full, want, 3*perInstance-maxMembers)
	}
	for _, r := range regs {
		expectState(t, r, "lobby", State{Counts: Counts{Member: maxMembers}})
	}
}

// An instance that stops heartbeating (it crashed) loses its members
// after TTL; a live one keeps its members far beyond TTL.
func TestRedisMembersOfAStoppedInstanceExpireAfterTTL(t *testing.T) {
	const ttl = time.Second
	regs := newRedisInstances(t, 2, Config{TTL: ttl, Refresh: ttl / 5})
	dead, live := regs[0], regs[1]
	for _, c := range []string{"a1", "a2", "a3"} {
		mustJoin(t, dead, "lobby", c, RoleMember, 5)
	}
	mustJoin(t, live, "lobby", "b1", RoleAdmin, 5)
	mustJoin(t, live, "lobby", "b2", RoleViewer, 5)
	expectJoinError(t, live, "lobby", "b3", RoleMember, 5, ErrFull)
	crash(dead)
	crashed := time.Now()
	testsvc.WaitFor(t, ttl+5*time.Second, "the crashed instance's members to expire", func() bool { return mustState(t, live, "lobby").Counts.Total() == 2 })
	if took := time.Since(crashed); took > ttl+2*time.Second {
		t.Logf("the dead instance's members took %v to expire (TTL %v): a slow machine?", took, ttl)
	}
	// The live instance's members outlive several TTLs.
	testsvc.WaitFor(t, 10*time.Second, "three TTLs after the crash", func() bool {
		expectState(t, live, "lobby", State{Counts: Counts{Admin: 1, Viewer: 1}})
		return time.Since(crashed) > 3*ttl
	})
	expectCounts(t, "join in a freed place", mustJoin(t, live, "lobby", "b3", RoleMember, 3), Counts{Member: 1, Admin: 1, Viewer: 1})
	// Joining the dead instance's members again elsewhere counts them anew.
	expectCounts(t, "a1 through the live instance", mustJoin(t, live, "lobby", "a1", RoleMember, 0), Counts{Member: 2, Admin: 1, Viewer: 1})
}

func TestRedisCloseRemovesItsMembers(t *testing.T) {
	regs := newRedisInstances(t, 2, Config{})
	a, b := regs[0], regs[1]
	mustJoin(t, a, "lobby", "a1", RoleMember, 0)
	mustJoin(t, a, "lobby", "a2", RoleAdmin, 0)
	mustJoin(t, a, "hall", "a1", RoleMember, 0)
	mustJoin(t, b, "lobby", "b1", RoleViewer, 0)
	ctx := context.Background()
	if err := a.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectState(t, b, "lobby", State{Counts: Counts{Viewer: 1}})
	expectState(t, b, "hall", State{})
	if _, err := a.Join(ctx, "lobby", "a3", RoleMember, 0); err == nil {
		t.Fatal("Join after Close succeeded")
	}
	expectState(t, b, "lobby", State{Counts: Counts{Viewer: 1}})
	if err := a.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRedisCloseIsSeenByEveryInstance(t *testing.T) {
	regs := newRedisInstances(t, 2, Config{})
	a, b := regs[0], regs[1]
	mustJoin(t, a, "lobby", "a1", RoleMember, 0)
	mustJoin(t, b, "lobby", "b1", RoleMember, 0)
	mustJoin(t, b, "hall", "b1", RoleMember, 0)
	if err := a.CloseGroup(context.Background(), "lobby"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectJoinError(t, b, "lobby", "b2", RoleMember, 0, ErrClosed)
	expectJoinError(t, b, "lobby", "b1", RoleAdmin, 0, ErrClosed)
	expectState(t, b, "lobby", State{Closed: true})
	// A fresh instance, started after the close, sees it too.
	client, _ := testsvc.Redis(t)
	c := newRedisRegistry(t, client, a.prefix, "late", Config{})
	expectJoinError(t, c, "lobby", "c1", RoleMember, 0, ErrClosed)
	// b's next heartbeat forgets its members of the closed group only.
	if err := b.refresh(context.Background()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if got := localMembers(b); !slices.Equal(got, []string{"hall/b1"}) {
		t.Fatalf("b remembers %v, want [hall/b1]", got)
	}
}

// localMembers lists what r's heartbeat refreshes, as "group/connID".
func localMembers(r *Redis) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for g, conns := range r.local {
		for c := range conns {
			out = append(out, g+"/"+c)
		}
	}
	slices.Sort(out)
	return out
}

// redisTime is the server's clock in ms since the Unix epoch.
func redisTime(t testing.TB, client rueidis.Client) int64 {
	t.Helper()
	tm, err := client.Do(context.Background(), client.B().Time().Build()).AsIntSlice()
	if err != nil || len(tm) != 2 {
		t.Fatalf("TIME: %v %v", tm, err)
	}
	return tm[0]*1000 + tm[1]/1000
}

func TestRedisHeartbeatRefreshesLiveMembersOnly(t *testing.T) {
	const ttl = time.Hour
	client, prefix := testsvc.Redis(t)
	r := newRedisRegistry(t, client, prefix, "hb", Config{TTL: ttl, Refresh: ttl / 2})
	ctx := context.Background()
	key := r.keys("lobby")[0]
	hget := func(field string) (role string, expires int64) {
		t.Helper()
		v, err := client.Do(ctx, client.B().Hget().Key(key).Field(field).Build()).ToString()
		if rueidis.IsRedisNil(err) {
			return "", 0
		}
		if err != nil {
			t.Fatalf("HGET %s: %v", field, err)
		}
		role, exp, ok := strings.Cut(v, "\t")
		n, err := strconv.ParseInt(exp, 10, 64)
		if !ok || err != nil {
			t.Fatalf("member value %q, want <role>\\t<ms>", v)
		}
		return role, n
	}
	hset := func(field, value string) {
		t.Helper()
		if err := client.Do(ctx, client.B().Hset().Key(key).FieldValue().FieldValue(field, value).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	mustJoin(t, r, "lobby", "kept", RoleAdmin, 0)
	mustJoin(t, r, "lobby", "expired", RoleMember, 0)
	mustJoin(t, r, "lobby", "deleted", RoleMember, 0)
	mustJoin(t, r, "lobby", "rejoined", RoleViewer, 0)
	now := redisTime(t, client)
	if role, exp := hget("hb|kept"); role != "admin" || exp <= now || exp > now+ttl.Milliseconds() {
		t.Fatalf("kept: role %q, expires in %dms; want admin, within the TTL", role, exp-now)
	}
	if pttl, err := client.Do(ctx, client.B().Pttl().Key(key).Build()).AsInt64(); err != nil || pttl <= 0 || pttl > ttl.Milliseconds() {
		t.Fatalf("members hash PTTL %d (%v), want within the TTL", pttl, err)
	}
	// Simulate a lapse: the kept member's expiry is older, "expired" is
	// past, "deleted" was dropped by another instance's count.
	hset("hb|kept", "admin\t"+strconv.FormatInt(now+1000, 10))
	hset("hb|expired", "member\t"+strconv.FormatInt(now-1, 10))
	if err := client.Do(ctx, client.B().Hdel().Key(key).Field("hb|deleted").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := r.refresh(ctx); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if role, exp := hget("hb|kept"); role != "admin" || exp < now+ttl.Milliseconds() {
		t.Fatalf("kept after refresh: role %q, expires in %dms; want admin, in about the TTL", role, exp-now)
	}
	for _, f := range []string{"hb|expired", "hb|deleted"} {
		if role, _ := hget(f); role != "" {
			t.Fatalf("%s is back with role %q after refresh", f, role)
		}
	}
	if got, want := localMembers(r), []string{"lobby/kept", "lobby/rejoined"}; !slices.Equal(got, want) {
		t.Fatalf("remembered %v, want %v", got, want)
	}
	expectState(t, r, "lobby", State{Counts: Counts{Admin: 1, Viewer: 1}})
}

// A member that left and joined again while a heartbeat ran is not
// forgotten when that heartbeat reports it gone.
func TestRedisHeartbeatKeepsAMemberJoinedAgainMeanwhile(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	r := newRedisRegistry(t, client, prefix, "hb", Config{TTL: time.Hour, Refresh: time.Minute})
	mustJoin(t, r, "lobby", "c", RoleMember, 0)
	mustJoin(t, r, "lobby", "d", RoleMember, 0)
	r.mu.Lock()
	// What a heartbeat snapshots before running its scripts.
	snapshot := []memberRef{{"lobby", "c", r.local["lobby"]["c"].gen}, {"lobby", "d", r.local["lobby"]["d"].gen}}
	r.mu.Unlock()
	// Meanwhile c leaves and joins again, and d leaves: the script found
	// both gone.
	mustLeave(t, r, "lobby", "c")
	mustLeave(t, r, "lobby", "d")
	mustJoin(t, r, "lobby", "c", RoleMember, 0)
	r.forget(snapshot)
	if got := localMembers(r); !slices.Equal(got, []string{"lobby/c"}) {
		t.Fatalf("remembered %v, want [lobby/c]", got)
	}
	// A report about the current join does forget it.
	r.mu.Lock()
	current := []memberRef{{"lobby", "c", r.local["lobby"]["c"].gen}}
	r.mu.Unlock()
	r.forget(current)
	if got := localMembers(r); len(got) != 0 {
		t.Fatalf("remembered %v, want nothing", got)
	}
}

func TestRedisForeignAndStaleValuesNeverCount(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	r := newRedisRegistry(t, client, prefix, "x", Config{})
	ctx := context.Background()
	key := r.keys("lobby")[0]
	far := strconv.FormatInt(redisTime(t, client)+int64(time.Hour/time.Millisecond), 10)
	for field, v := range map[string]string{
		"other|garbage":     "garbage",
		"other|owner":       "owner\t" + far,
		"other|no-expiry":   "member\t",
		"other|bad-expiry":  "member\tsoon",
		"other|expired":     "admin\t1",
		"other|live-member": "viewer\t" + far,
	} {
		if err := client.Do(ctx, client.B().Hset().Key(key).FieldValue().FieldValue(field, v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	expectState(t, r, "lobby", State{Counts: Counts{Viewer: 1}})
	expectCounts(t, "join", mustJoin(t, r, "lobby", "c", RoleMember, 2), Counts{Member: 1, Viewer: 1})
	// The join deleted the stale fields.
	if n, err := client.Do(ctx, client.B().Hlen().Key(key).Build()).AsInt64(); err != nil || n != 2 {
		t.Fatalf("HLEN %d (%v), want 2", n, err)
	}
}

func TestRedisErrorsNameTheGroup(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	var (
		mu   sync.Mutex
		errs []error
	)
	r, err := NewRedis(client, RedisConfig{InstanceID: "a", Config: Config{TTL: time.Second, Refresh: 50 * time.Millisecond},
		OnError: func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.Close(ctx) // Redis is down: removing the members fails
	}()
	mustJoin(t, r, "lobby", "c", RoleMember, 0)
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.Join(ctx, "lobby", "d", RoleMember, 0); err == nil || !strings.Contains(err.Error(), `"lobby"`) {
		t.Fatalf("Join with Redis down: %v, want an error naming the group", err)
	}
	if _, err := r.State(ctx, "lobby"); err == nil {
		t.Fatal("State with Redis down succeeded")
	}
	// The heartbeat reports its failures.
	testsvc.WaitFor(t, 5*time.Second, "a heartbeat error", func() bool { mu.Lock(); defer mu.Unlock(); return len(errs) > 0 })
}

// BenchmarkRedisJoin measures a join and a leave (two script runs, each
// counting the group) in groups of several sizes, against a redis-server
// of its own: counting reads the whole members hash, so the cost grows
// with the group (Redis doc comment).
func BenchmarkRedisJoin(b *testing.B) {
	srv := testsvc.StartRedis(b)
	client := testsvc.Connect(b, srv.Addr())
	for _, size := range []int{10, 1000, 10000} {
		b.Run(strconv.Itoa(size)+"_members", func(b *testing.B) {
			r := newRedisRegistry(b, client, "bench:"+strconv.Itoa(size)+":", "bench", Config{})
			ctx := context.Background()
			// Members of another instance, written directly: joining them
			// one by one would take O(size²).
			far := "member\t" + strconv.FormatInt(redisTime(b, client)+int64(time.Hour/time.Millisecond), 10)
			cmds := make(rueidis.Commands, 0, size)
			for i := range size {
				cmds = append(cmds, client.B().Hset().Key(r.keys("lobby")[0]).FieldValue().FieldValue("other|m"+strconv.Itoa(i), far).Build())
			}
			for _, res := range client.DoMulti(ctx, cmds...) {
				if err := res.Error(); err != nil {
					b.Fatal(err)
				}
			}
			expectState(b, r, "lobby", State{Counts: Counts{Member: size}})
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := r.Join(ctx, "lobby", "x", RoleAdmin, size+1); err != nil {
					b.Fatal(err)
				}
				if _, err := r.Leave(ctx, "lobby", "x"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
