package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The Redis backend enforces the limit with GCRA (the generic cell rate
// algorithm), the token bucket of the memory backend seen from the other
// side: instead of a level and the time of that level, a key stores one
// number, its theoretical arrival time (TAT), the time at which its bucket
// is full again. At time now the key owes debt = max(0, TAT-now) and holds
// level = Burst - debt×Points/Interval points; spending c points moves TAT
// forward by c×Interval/Points. GCRA was chosen over storing a bucket
// because:
//
//   - one value per key, which a Consume reads with the ban in one MGET
//     and writes with one SET (a bucket is a level and a time: a hash);
//   - TAT is exactly when the key becomes useless, so the key's PEXPIRE is
//     TAT-now: a key expires the moment it is full again, and Redis memory
//     holds only keys that spent within the last Burst/Points×Interval,
//     plus the banned ones, without any sweep;
//   - a missing key and an expired one both mean "full", so no decision
//     depends on when Redis reclaims a key.
//
// # Exact arithmetic
//
// Lua numbers are doubles: integers are exact below 2^53, and Redis TIME
// counts microseconds since the epoch (about 2^50.6). Interval/Points is
// rarely a whole number of µs (3 per second: 333 333⅓ µs), so, as in
// memory.go, time is counted in quanta (1 µs unless the configuration is
// absurd) and a point costs unit level units, with
//
//	unit = Interval/g, rate = Points/g units per quantum, g = gcd(Points, Interval),
//
// Interval in quanta. TAT is stored as "<q> <f>" ("<q>" when f is 0),
// meaning q + f/rate quanta: q stays below 2^53 until the year 2255 and f
// below rate ≤ 2^51, so neither is ever rounded, and the debt the script
// computes, (q - now)×rate + f, stays within full = Burst×unit ≤ 2^51.
// Decisions are thus exact to the microsecond: 3 per second refills a
// point every 333 333⅓ µs, reported as 333 334.
//
// # Keys
//
//	<prefix>rl:v1:{<key>}      TAT "<q> <f>" or "<q>"; PX to TAT
//	<prefix>rl:v1:{<key>}:ban  end of the ban, µs since the epoch; PX to it
//
// Both carry the hash tag {<key>}, so one script reaches both on a Redis
// Cluster. A key that is empty or starts with '}' would make an empty tag,
// which Redis ignores (hashing the whole names, two slots); such keys use
// <prefix>rl:v1!{!}:tat:<key> and <prefix>rl:v1!{!}:ban:<key>, which share
// the slot of the tag "!".
//
// # Changing the algorithm: v2 during a rolling deploy
//
// The "v1" in the keys names this algorithm and value format. A change of
// either (another algorithm, another TAT encoding) must use "v2" keys: a
// v1 instance would misread a v2 value and the reverse, and while a
// rolling deploy runs, old and new instances serve traffic side by side.
// With separate versions each instance reads only values it understands;
// the price is that during the deploy a key has two independent buckets,
// so a client whose requests reach both old and new instances may spend up
// to twice its limit (each bucket allows Burst at once and Points per
// Interval), and a ban set through one version is not seen by the other.
// A v2 script can close that second gap by also reading the v1 ban key,
// which shares the {<key>} slot. Nothing needs migrating afterwards: the
// v1 keys expire by themselves, buckets within Burst/Points×Interval and
// bans when they end.

// Limits of the scaled arithmetic (see above).
const (
	// redisMaxFull bounds Burst×unit, the level of a full bucket.
	redisMaxFull = 1 << 51
	// redisMaxBan bounds a ban, about 142 years, so that its end in µs
	// since the epoch stays below 2^53.
	redisMaxBan = (1 << 52) * time.Microsecond
)

var (
	//go:embed redis_consume.lua
	consumeLua string
	//go:embed redis_ban.lua
	banLua string

	// rueidis scripts are safe for concurrent use and keep their SHA-1:
	// EVALSHA, falling back to EVAL once per server. Each limiter has its
	// own consume script (consumeScriptFor).
	banScript = rueidis.NewLuaScript(banLua)
)

// consumeConstants is the right-hand side of the line of
// redis_consume.lua that consumeScriptFor replaces with a limiter's
// constants.
const consumeConstants = "tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])"

// consumeScriptFor returns the consume script with the limiter's
// constants written in, so that a check sends only its cost: one script
// per configuration, which Redis caches (a few per gateway, as each rate
// limit rule is a configuration), for about 10% less Redis CPU per check
// (redis_consume.lua).
func consumeScriptFor(burst, unit, rate, quantum, block int64) *rueidis.Lua {
	values := strconv.FormatInt(burst, 10) + ", " + strconv.FormatInt(unit, 10) + ", " + strconv.FormatInt(rate, 10) + ", " +
		strconv.FormatInt(quantum, 10) + ", " + strconv.FormatInt(block, 10)
	return rueidis.NewLuaScript(strings.Replace(consumeLua, consumeConstants, values, 1))
}

// RedisConfig configures a Redis limiter. The zero value is the default
// configuration.
type RedisConfig struct {
	// Config holds Points, Interval, Burst and Block. Now is ignored: the
	// scripts read the Redis server's clock (TIME), so instances with
	// skewed clocks agree (docs/design.md, lesson L-11). Durations count in
	// whole microseconds, the resolution of TIME: Interval and Block are
	// rounded up to them.
	Config

	// KeyPrefix is prepended to every key, so several gateways (or tests)
	// can share a server. It must not contain '{' or '}', which would change
	// the keys' hash slot. Default: "".
	KeyPrefix string
}

// Redis is the Limiter shared by every instance of a cluster, on one Redis
// server or Redis Cluster. Consume is one Lua script run (one round trip),
// atomic per key on the server, so concurrent consumes on any number of
// instances spend exactly the points there are; Ban is one script run,
// Unban and Reset one DEL, all seen by every instance's next Consume. The
// algorithm and the keys are described at the top of redis.go.
//
// Every call sends one command with the caller's ctx and no other
// deadline: callers must give ctx a deadline, or a call made during an
// outage waits until the connection fails (rueidis#913). The limiter
// starts no goroutine and closes nothing; the caller owns the client.
type Redis struct {
	client  rueidis.Client
	prefix  string
	burst   int64
	block   time.Duration // Config.Block, clamped to redisMaxBan
	consume *rueidis.Lua  // consumeScriptFor this limiter
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a limiter on client enforcing cfg (zero fields take the
// defaults of Config.WithDefaults). It sends nothing: an unreachable server
// shows in the first call. Limits too large for exact arithmetic are
// scaled as memory.go does: time is counted in quanta of 10, 100, … µs,
// Interval rounded up to them, and Burst is capped so that Burst×unit stays
// at most 2^51.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	if client == nil {
		return nil, errors.New("ratelimit: no Redis client")
	}
	if strings.ContainsAny(cfg.KeyPrefix, "{}") {
		return nil, fmt.Errorf("ratelimit: key prefix %q contains '{' or '}', which would put keys of different limits in one Redis Cluster slot", cfg.KeyPrefix)
	}
	c := cfg.Config.WithDefaults()
	quantum, unit, rate, burst := redisScale(int64(c.Points), int64(c.Burst), micros(c.Interval))
	block := min(c.Block, redisMaxBan)
	return &Redis{
		client:  client,
		prefix:  cfg.KeyPrefix,
		burst:   burst,
		block:   block,
		consume: consumeScriptFor(burst, unit, rate, quantum, micros(block)),
	}, nil
}

// redisScale picks the integer units of the script (see the top of this
// file): the quantum in µs, the level units per point, the units refilled
// per quantum, and Burst capped so that Burst×unit ≤ redisMaxFull.
func redisScale(points, burst, intervalUs int64) (quantum, unit, rate, clampedBurst int64) {
	points, burst = min(points, redisMaxFull), min(burst, redisMaxFull)
	for quantum = 1; ; quantum *= 10 {
		steps := (intervalUs-1)/quantum + 1 // Interval in quanta, rounded up
		g := gcd(points, steps)
		unit, rate = steps/g, points/g
		if unit <= redisMaxFull/burst || steps == 1 || quantum > redisMaxFull/10 {
			return quantum, unit, rate, max(1, min(burst, redisMaxFull/unit))
		}
	}
}

// micros is d in whole microseconds, rounded up.
func micros(d time.Duration) int64 {
	us := int64(d / time.Microsecond)
	if d%time.Microsecond > 0 {
		us++
	}
	return us
}

// keys returns key's bucket and ban keys (see the top of this file).
func (r *Redis) keys(key string) []string {
	if key == "" || key[0] == '}' {
		base := r.prefix + "rl:v1!{!}:"
		return []string{base + "tat:" + key, base + "ban:" + key}
	}
	bucket := r.prefix + "rl:v1:{" + key + "}"
	return []string{bucket, bucket + ":ban"}
}

// Consume implements Limiter with one script run, which reads the ban and
// the TAT and writes either the new TAT or, when Block is set and the
// consume is refused, the ban. The results match the memory backend's,
// durations to the microsecond.
func (r *Redis) Consume(ctx context.Context, key string, cost int) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if cost < 1 {
		return Result{}, fmt.Errorf("consuming %d points: cost must be at least 1", cost)
	}
	// Any cost above Burst is refused alike; clamping keeps cost×unit
	// exact in the script.
	c := min(int64(cost), r.burst+1)
	reply, err := r.consume.Exec(ctx, r.client, r.keys(key), []string{strconv.FormatInt(c, 10)}).AsIntSlice()
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: consuming %d points of %q: %w", cost, key, err)
	}
	if len(reply) != 3 || reply[1] < 0 || reply[2] < 0 {
		return Result{}, fmt.Errorf("ratelimit: consuming %d points of %q: malformed reply %v", cost, key, reply)
	}
	return Result{
		Allowed:    reply[0] == 1,
		Remaining:  int(reply[1]),
		ResetAfter: fromMicros(reply[2]),
	}, nil
}

// fromMicros converts µs to a Duration, saturating.
func fromMicros(us int64) time.Duration {
	if us > int64(math.MaxInt64/time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(us) * time.Microsecond
}

// Reset implements Limiter with one DEL of both keys.
func (r *Redis) Reset(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.client.Do(ctx, r.client.B().Del().Key(r.keys(key)...).Build()).Error(); err != nil {
		return fmt.Errorf("ratelimit: resetting %q: %w", key, err)
	}
	return nil
}

// Ban implements Limiter with one script run, which writes the ban's end
// by the server's clock. Bans longer than about 142 years are cut to that.
func (r *Redis) Ban(ctx context.Context, key string, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		d = r.block
	}
	if d <= 0 {
		d = DefaultBan
	}
	us := micros(min(d, redisMaxBan))
	if err := banScript.Exec(ctx, r.client, r.keys(key)[1:], []string{strconv.FormatInt(us, 10)}).Error(); err != nil {
		return fmt.Errorf("ratelimit: banning %q: %w", key, err)
	}
	return nil
}

// Unban implements Limiter with one DEL of the ban key.
func (r *Redis) Unban(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.client.Do(ctx, r.client.B().Del().Key(r.keys(key)[1]).Build()).Error(); err != nil {
		return fmt.Errorf("ratelimit: unbanning %q: %w", key, err)
	}
	return nil
}
