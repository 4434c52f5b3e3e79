package ratelimit

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// newRedisLimiter returns a limiter on the test Redis with a key prefix of
// its own, deleted in t.Cleanup, and the client and prefix it uses.
func newRedisLimiter(t testing.TB, cfg RedisConfig) (*Redis, rueidis.Client, string) {
	t.Helper()
	client, prefix := testsvc.Redis(t)
	cfg.KeyPrefix = prefix + cfg.KeyPrefix
	l, err := NewRedis(client, cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	return l, client, cfg.KeyPrefix
}

func TestRedis(t *testing.T) {
	testLimiter(t, func(t *testing.T, cfg Config) Limiter {
		if cfg.Now != nil {
			t.Skip("the Redis limiter runs on the server's clock; the real-clock run covers this")
		}
		l, _, _ := newRedisLimiter(t, RedisConfig{Config: cfg})
		return l
	})
}

func TestNewRedisRefusesBadConfig(t *testing.T) {
	if _, err := NewRedis(nil, RedisConfig{}); err == nil {
		t.Error("NewRedis accepted a nil client")
	}
	client, _ := testsvc.Redis(t)
	for _, p := range []string{"{app}", "a{", "b}"} {
		if _, err := NewRedis(client, RedisConfig{KeyPrefix: p}); err == nil {
			t.Errorf("NewRedis accepted the key prefix %q", p)
		}
	}
}

func TestRedisKeysShareASlotPerKey(t *testing.T) {
	r := &Redis{prefix: "p:"}
	for _, tc := range []struct {
		name, key   string
		bucket, ban string
	}{
		{"a plain key is the hash tag", "ip:203.0.113.9", "p:rl:v1:{ip:203.0.113.9}", "p:rl:v1:{ip:203.0.113.9}:ban"},
		{"a '}' inside the key shortens the tag of both keys alike", "a}b", "p:rl:v1:{a}b}", "p:rl:v1:{a}b}:ban"},
		{"an empty key would make an empty tag", "", "p:rl:v1!{!}:tat:", "p:rl:v1!{!}:ban:"},
		{"a key starting with '}' would make an empty tag", "}x", "p:rl:v1!{!}:tat:}x", "p:rl:v1!{!}:ban:}x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := r.keys(tc.key)
			if want := []string{tc.bucket, tc.ban}; !slices.Equal(got, want) {
				t.Fatalf("keys(%q) = %q, want %q", tc.key, got, want)
			}
			if a, b := keySlot(got[0]), keySlot(got[1]); a != b {
				t.Fatalf("keys(%q) hash to slots %d and %d", tc.key, a, b)
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

// Three instances are three clients: only the script's atomicity on the
// server orders their consumes.
func TestRedisConcurrentInstancesAllowExactlyThePoints(t *testing.T) {
	const instances, perInstance, points = 3, 10, 5
	_, _, prefix := newRedisLimiter(t, RedisConfig{})
	var limiters []*Redis
	for range instances {
		client, _ := testsvc.Redis(t)
		l, err := NewRedis(client, RedisConfig{Config: Config{Points: points, Interval: slow}, KeyPrefix: prefix})
		if err != nil {
			t.Fatalf("NewRedis: %v", err)
		}
		limiters = append(limiters, l)
	}
	key := uniqueKey("instances")
	var (
		mu        sync.Mutex
		remaining []int
		refused   int
		wg        sync.WaitGroup
	)
	start := make(chan struct{})
	for _, l := range limiters {
		for range perInstance {
			wg.Go(func() {
				<-start
				r, err := l.Consume(context.Background(), key, 1)
				if err != nil {
					t.Errorf("Consume: %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if r.Allowed {
					remaining = append(remaining, r.Remaining)
				} else {
					refused++
				}
			})
		}
	}
	close(start)
	wg.Wait()
	slices.Sort(remaining)
	if want := []int{0, 1, 2, 3, 4}; !slices.Equal(remaining, want) || refused != instances*perInstance-points {
		t.Fatalf("allowed consumes left %v, %d refused; want %v and %d", remaining, refused, want, instances*perInstance-points)
	}
}

func TestRedisBanResetAndUnbanAreSeenByEveryInstance(t *testing.T) {
	a, _, prefix := newRedisLimiter(t, RedisConfig{Config: Config{Points: 3, Interval: slow}})
	clientB, _ := testsvc.Redis(t)
	b, err := NewRedis(clientB, RedisConfig{Config: Config{Points: 3, Interval: slow}, KeyPrefix: prefix})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	key := uniqueKey("shared")
	expectResult(t, mustConsume(t, a, key, 1), true, 2)
	expectResult(t, mustConsume(t, b, key, 1), true, 1)
	mustBan(t, a, key, slow)
	r := mustConsume(t, b, key, 1)
	expectResult(t, r, false, 0)
	expectWithin(t, r.ResetAfter, slow-time.Minute, slow)
	mustUnban(t, b, key)
	expectResult(t, mustConsume(t, a, key, 1), true, 0)
	expectResult(t, mustConsume(t, b, key, 1), false, 0)
	mustReset(t, a, key)
	expectResult(t, mustConsume(t, b, key, 3), true, 0)
}

// Redis memory stays bounded: a bucket's key lives until the bucket is
// full again, a ban's until it ends, and Unban and Reset create nothing.
func TestRedisKeysExpireWhenUseless(t *testing.T) {
	l, client, _ := newRedisLimiter(t, RedisConfig{Config: Config{Points: 4, Interval: 400 * time.Millisecond, Block: 300 * time.Millisecond}})
	ctx := context.Background()
	pttl := func(key string) time.Duration {
		t.Helper()
		ms, err := client.Do(ctx, client.B().Pttl().Key(key).Build()).AsInt64()
		if err != nil {
			t.Fatalf("PTTL %s: %v", key, err)
		}
		return time.Duration(ms) * time.Millisecond
	}
	key := uniqueKey("expiry")
	keys := l.keys(key)
	mustConsume(t, l, key, 1)
	if d := pttl(keys[0]); d <= 0 || d > 100*time.Millisecond {
		t.Fatalf("bucket PTTL after 1 point: %v, want within (0, 100ms]", d)
	}
	if d := pttl(keys[1]); d != -2*time.Millisecond {
		t.Fatalf("ban key PTTL %v, want none (-2)", d)
	}
	start := time.Now()
	mustConsume(t, l, key, 3)
	if d := pttl(keys[0]); d <= 0 || d > 400*time.Millisecond || d < 300*time.Millisecond-time.Since(start) {
		t.Fatalf("bucket PTTL after 4 points: %v, want about 400ms", d)
	}
	// The refusal bans for Block.
	if r := mustConsume(t, l, key, 1); r.Allowed {
		t.Skip("machine too slow: a point refilled before the refusal the test needs")
	}
	if d := pttl(keys[1]); d <= 0 || d > 300*time.Millisecond {
		t.Fatalf("ban key PTTL %v, want within (0, 300ms]", d)
	}
	testsvc.WaitFor(t, 5*time.Second, "both keys to expire", func() bool { return pttl(keys[0]) == -2*time.Millisecond && pttl(keys[1]) == -2*time.Millisecond })

	other := uniqueKey("expiry-unban")
	mustUnban(t, l, other)
	mustReset(t, l, other)
	for _, k := range l.keys(other) {
		if d := pttl(k); d != -2*time.Millisecond {
			t.Fatalf("%s exists after Unban and Reset of a key never used (PTTL %v)", k, d)
		}
	}
	mustConsume(t, l, other, 1)
	mustBan(t, l, other, time.Hour)
	mustReset(t, l, other)
	for _, k := range l.keys(other) {
		if d := pttl(k); d != -2*time.Millisecond {
			t.Fatalf("%s exists after Reset (PTTL %v)", k, d)
		}
	}
}

func TestRedisReadsAForeignValueAsFull(t *testing.T) {
	l, client, _ := newRedisLimiter(t, RedisConfig{Config: Config{Points: 2, Interval: slow}})
	ctx := context.Background()
	for _, v := range []string{"garbage", "1 x", "", " "} {
		key := uniqueKey("foreign")
		keys := l.keys(key)
		for _, k := range keys {
			if err := client.Do(ctx, client.B().Set().Key(k).Value(v).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
		expectResult(t, mustConsume(t, l, key, 2), true, 0)
		expectResult(t, mustConsume(t, l, key, 1), false, 0)
	}
}

func TestRedisFractionalRateIsExactToTheMicrosecond(t *testing.T) {
	// 3 points per second: one point every 333 333⅓ µs.
	l, _, _ := newRedisLimiter(t, RedisConfig{Config: Config{Points: 3, Interval: time.Second}})
	key := uniqueKey("third")
	start := time.Now()
	r := mustConsume(t, l, key, 1)
	if !r.Allowed || r.ResetAfter != 333_334*time.Microsecond {
		t.Fatalf("first consume: %+v, want allowed and full again in 333.334ms", r)
	}
	expectResult(t, mustConsume(t, l, key, 2), true, 0)
	r = mustConsume(t, l, key, 1)
	took := time.Since(start)
	if r.Allowed || r.ResetAfter > 333_334*time.Microsecond || r.ResetAfter < 333_333*time.Microsecond-took {
		t.Fatalf("refused consume: %+v, want ResetAfter about 333.334ms less the %v the calls took", r, took)
	}
}

// The consume script reads the limiter's constants from ARGV unless
// NewRedis writes them in; both give the same results.
func TestRedisConsumeScriptTakesItsConstants(t *testing.T) {
	if n := strings.Count(consumeLua, consumeConstants); n != 1 {
		t.Fatalf("redis_consume.lua holds the constants' line %d times, want once", n)
	}
	l, client, _ := newRedisLimiter(t, RedisConfig{Config: Config{Points: 3, Interval: slow, Block: time.Hour}})
	specialized := strings.Replace(consumeLua, consumeConstants, "3, 1200000000, 1, 1, 3600000000", 1)
	if strings.Contains(specialized, "ARGV[2]") {
		t.Fatal("the specialized script still reads ARGV[2]")
	}
	generic := rueidis.NewLuaScript(consumeLua)
	ctx := context.Background()
	a, b := uniqueKey("specialized"), uniqueKey("generic")
	for _, cost := range []string{"2", "1", "1", "1"} {
		ra := mustConsume(t, l, a, int(cost[0]-'0'))
		reply, err := generic.Exec(ctx, client, l.keys(b), []string{cost, "3", "1200000000", "1", "1", "3600000000"}).AsIntSlice()
		if err != nil {
			t.Fatal(err)
		}
		rb := Result{Allowed: reply[0] == 1, Remaining: int(reply[1]), ResetAfter: fromMicros(reply[2])}
		if ra.Allowed != rb.Allowed || ra.Remaining != rb.Remaining || (ra.ResetAfter-rb.ResetAfter).Abs() > time.Second {
			t.Fatalf("cost %s: specialized %+v, generic %+v", cost, ra, rb)
		}
	}
}

func TestRedisScale(t *testing.T) {
	for _, tc := range []struct {
		name                        string
		points, burst, intervalUs   int64
		quantum, unit, rate, burst2 int64
	}{
		{"200 per second", 200, 200, 1e6, 1, 5000, 1, 200},
		{"3 per second", 3, 3, 1e6, 1, 1e6, 3, 3},
		{"4 per 400ms with a burst of 8", 4, 8, 4e5, 1, 1e5, 1, 8},
		{"7 per 48h with a burst of a million counts time in 100µs", 7, 1e6, 48 * 3600 * 1e6, 100, 1728e6, 7, 1e6},
		{"absurd points", math.MaxInt64, math.MaxInt64, 1, 1, 1, redisMaxFull, redisMaxFull},
		{"absurd interval and burst", 1, math.MaxInt64, math.MaxInt64 / 1000, 1e15, 10, 1, redisMaxFull / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, u, r, b := redisScale(tc.points, tc.burst, tc.intervalUs)
			if q != tc.quantum || u != tc.unit || r != tc.rate || b != tc.burst2 {
				t.Fatalf("got quantum %d, unit %d, rate %d, burst %d; want %d, %d, %d, %d", q, u, r, b, tc.quantum, tc.unit, tc.rate, tc.burst2)
			}
			if b*u > redisMaxFull || r > redisMaxFull {
				t.Fatalf("full %d or rate %d above 2^51", b*u, r)
			}
		})
	}
}

func TestRedisHugeConfigsWork(t *testing.T) {
	for _, cfg := range []Config{
		{Points: 7, Interval: 48 * time.Hour, Burst: 1_000_000},
		{Points: math.MaxInt64, Interval: time.Nanosecond},
		{Points: 1, Interval: math.MaxInt64, Burst: math.MaxInt64},
		{Points: math.MaxInt64 - 1, Interval: math.MaxInt64, Burst: 3},
		{Points: 1, Interval: time.Second, Block: math.MaxInt64},
	} {
		l, _, _ := newRedisLimiter(t, RedisConfig{Config: cfg})
		key := uniqueKey("huge")
		r := mustConsume(t, l, key, 1)
		burst := cfg.Burst
		if burst == 0 {
			burst = cfg.Points
		}
		if !r.Allowed || r.Remaining < min(burst-1, 1<<40) || r.ResetAfter <= 0 {
			t.Fatalf("%+v: first consume %+v", cfg, r)
		}
		mustBan(t, l, key, math.MaxInt64)
		if r := mustConsume(t, l, key, 1); r.Allowed || r.ResetAfter < 100*365*24*time.Hour {
			t.Fatalf("%+v: consume during a ban of the longest duration: %+v", cfg, r)
		}
	}
}

func TestRedisErrorsNameTheKey(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	l, err := NewRedis(client, RedisConfig{})
	if err != nil {
		t.Fatal(err)
	}
	mustConsume(t, l, "k", 1)
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = l.Consume(ctx, "ip:192.0.2.1", 1)
	if err == nil || !strings.Contains(err.Error(), `"ip:192.0.2.1"`) {
		t.Fatalf("Consume with Redis down: %v, want an error naming the key", err)
	}
	if err := l.Ban(ctx, "ip:192.0.2.1", time.Second); err == nil {
		t.Fatal("Ban with Redis down succeeded")
	}
	if err := l.Reset(ctx, "ip:192.0.2.1"); err == nil {
		t.Fatal("Reset with Redis down succeeded")
	}
	if err := l.Unban(ctx, "ip:192.0.2.1"); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Unban with Redis down: %v, want a connection error", err)
	}
}

// BenchmarkRedisConsume measures checks per second from many goroutines
// (64 per CPU) over 1024 keys, which rueidis pipelines, against a
// redis-server of its own, so that other tests sharing the test Redis do
// not skew it. The client has the gateway's options (module.go
// clientOption: AlwaysPipelining, no cache, no retries); the second run
// adds a MaxFlushDelay, which trades up to that much latency for larger
// pipelines and fewer syscalls on both ends.
func BenchmarkRedisConsume(b *testing.B) {
	srv := testsvc.StartRedis(b)
	for _, bc := range []struct {
		name  string
		delay time.Duration
	}{
		{"gateway_options", 0},
		{"max_flush_delay_100us", 100 * time.Microsecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			client, err := rueidis.NewClient(rueidis.ClientOption{
				InitAddress:      []string{srv.Addr()},
				DisableCache:     true,
				DisableRetry:     true,
				AlwaysPipelining: true,
				MaxFlushDelay:    bc.delay,
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(client.Close)
			l, err := NewRedis(client, RedisConfig{Config: Config{Points: 1 << 30}})
			if err != nil {
				b.Fatal(err)
			}
			benchmarkConsume(b, l)
		})
	}
}

func benchmarkConsume(b *testing.B, l Limiter) {
	ctx := context.Background()
	var keys [1024]string
	for i := range keys {
		keys[i] = "ip:198.51.100." + strconv.Itoa(i)
	}
	b.SetParallelism(64)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 31
		for pb.Next() {
			r, err := l.Consume(ctx, keys[i%len(keys)], 1)
			if err != nil || !r.Allowed {
				b.Errorf("Consume: %+v, %v", r, err)
				return
			}
			i += 7
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checks/s")
}
