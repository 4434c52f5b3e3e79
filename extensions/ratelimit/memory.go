package ratelimit

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"time"
)

// The memory backend keeps a token bucket per key, in integer arithmetic so
// that its decisions are exact: "4 per second" refills one point after
// exactly 250 ms, not after 249.99999 or 250.00001.
//
// A bucket's level counts points in units of 1/unit point, where
// unit = Interval/g and g = gcd(Points, Interval in ns); it refills by
// rate = Points/g units per nanosecond, which is Points per Interval, and
// holds at most full = Burst×unit. Spending c points takes c×unit units.
// A bucket remembers the time of its level (at) and is refilled when it is
// next used:
//
//	level = min(full, level + (now-at)×rate)
//
// The time until the level reaches x is ceil((x-level)/rate) ns, which is
// what Result.ResetAfter reports (x = full when allowed, x = cost×unit when
// refused). A bucket's ban is the time it ends; a banned bucket refuses
// without looking at its level, which keeps refilling meanwhile.
//
// Should full not fit below 2^61 (a Points sharing no factor with an
// Interval of a day and a Burst above 26 000, say), time is counted in
// quanta of 10, 100, … ns instead of 1, the Interval rounded up to whole
// quanta, until it does.
//
// Keys are spread over maps, each behind its own mutex, so the check and
// the spend are one step per key and keys in different shards never wait
// for each other. A key that is full and unbanned behaves exactly like a
// key never seen, so Sweep drops such keys: memory is bounded by the keys
// that spent within the last Burst/Points×Interval, plus those banned.

// memoryShards is how many maps, each with its own mutex, hold the keys.
const memoryShards = 64

// noBan is the ban end of a key that is not banned: before any time.
const noBan = math.MinInt64

// Memory is the in-process Limiter, for a gateway running alone: its
// counts live and die with the process. It starts no goroutine and needs no
// Close; the caller should call Sweep periodically (every Interval or so)
// so that keys which stopped spending give their memory back.
type Memory struct {
	now   func() time.Time
	epoch time.Time // times are kept as ns offsets from it
	seed  maphash.Seed

	block   time.Duration
	quantum int64 // ns per time step; 1 unless full would overflow
	unit    int64 // level units per point
	rate    int64 // level units gained per quantum
	burst   int64
	full    int64 // burst × unit

	shards [memoryShards]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	level  int64 // in units of 1/unit point
	at     int64 // ns offset from epoch of level
	banned int64 // ns offset from epoch at which the ban ends; noBan if none
}

var (
	_ Limiter = (*Memory)(nil)
	_ Sweeper = (*Memory)(nil)
)

// NewMemory returns a Memory limiter enforcing cfg (zero fields take the
// defaults of Config.WithDefaults). cfg.Now is read at construction and by
// every call but Reset and Unban.
func NewMemory(cfg Config) *Memory {
	cfg = cfg.WithDefaults()
	m := &Memory{now: cfg.Now, seed: maphash.MakeSeed(), block: cfg.Block}
	m.epoch = m.now()
	m.quantum, m.unit, m.rate, m.burst = scale(int64(cfg.Points), int64(cfg.Burst), int64(cfg.Interval))
	m.full = m.burst * m.unit
	for i := range m.shards {
		m.shards[i].buckets = make(map[string]*bucket)
	}
	return m
}

// scale picks the integer units of the bucket (see the comment at the top
// of this file), keeping full and full+rate below math.MaxInt64.
func scale(points, burst, interval int64) (quantum, unit, rate, clampedBurst int64) {
	const limit = math.MaxInt64 / 4
	points, burst = min(points, limit), min(burst, limit)
	for quantum = 1; ; quantum *= 10 {
		steps := (interval-1)/quantum + 1 // ceil, without overflowing
		g := gcd(points, steps)
		unit, rate = steps/g, points/g
		if unit <= limit/burst || steps == 1 || quantum > math.MaxInt64/10 {
			return quantum, unit, rate, min(burst, limit/unit)
		}
	}
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (m *Memory) clock() int64 {
	return int64(m.now().Sub(m.epoch))
}

func (m *Memory) shard(key string) *limiterShard {
	return &m.shards[maphash.String(m.seed, key)%memoryShards]
}

// get returns key's bucket, creating a full one. The caller holds sh.mu.
func (sh *limiterShard) get(key string, now, full int64) *bucket {
	b := sh.buckets[key]
	if b == nil {
		b = &bucket{level: full, at: now, banned: noBan}
		// The map keeps the key while the bucket lives: a key sliced from
		// a larger string must not pin that string.
		sh.buckets[strings.Clone(key)] = b
	}
	return b
}

// refill brings b's level up to now. Only whole quanta are credited, and
// at advances by exactly those, so no fraction of a quantum is lost.
func (m *Memory) refill(b *bucket, now int64) {
	if b.level >= m.full {
		b.level, b.at = m.full, max(b.at, now)
		return
	}
	elapsed := now - b.at
	if elapsed <= 0 {
		return // a clock that went back refills nothing
	}
	steps := elapsed / m.quantum
	if steps >= ceilDiv(m.full-b.level, m.rate) {
		b.level, b.at = m.full, now
		return
	}
	b.level += steps * m.rate
	b.at += steps * m.quantum
}

// until returns how long after now b's level reaches target, b being
// refilled up to now.
func (m *Memory) until(b *bucket, now, target int64) time.Duration {
	if b.level >= target {
		return 0
	}
	steps := ceilDiv(target-b.level, m.rate)
	if steps > math.MaxInt64/m.quantum {
		return math.MaxInt64
	}
	// at ≤ now: the part of a quantum already elapsed counts.
	return time.Duration(steps*m.quantum - (now - b.at))
}

func ceilDiv(a, b int64) int64 {
	return (a + b - 1) / b
}

// addSat returns t+d, saturating instead of wrapping around.
func addSat(t int64, d time.Duration) int64 {
	if int64(d) > math.MaxInt64-t {
		return math.MaxInt64
	}
	return t + int64(d)
}

// Consume implements Limiter. A cost above Burst is refused with the time
// until the bucket is full as ResetAfter (the soonest anything could
// change), and bans the key like any refusal when Block is set. A cost
// below 1 is an error and changes nothing.
func (m *Memory) Consume(ctx context.Context, key string, cost int) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if cost < 1 {
		return Result{}, fmt.Errorf("consuming %d points: cost must be at least 1", cost)
	}
	now := m.clock()
	sh := m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.get(key, now, m.full)
	if b.banned > now {
		return Result{ResetAfter: time.Duration(b.banned - now)}, nil
	}
	m.refill(b, now)
	target := m.full
	if c := int64(cost); c <= m.burst {
		target = c * m.unit
		if b.level >= target {
			b.level -= target
			return Result{Allowed: true, Remaining: int(b.level / m.unit), ResetAfter: m.until(b, now, m.full)}, nil
		}
	}
	if m.block > 0 {
		b.banned = addSat(now, m.block)
		return Result{ResetAfter: m.block}, nil
	}
	return Result{Remaining: int(b.level / m.unit), ResetAfter: m.until(b, now, target)}, nil
}

// Reset implements Limiter: the key is forgotten, which is the same as full
// and unbanned.
func (m *Memory) Reset(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sh := m.shard(key)
	sh.mu.Lock()
	delete(sh.buckets, key)
	sh.mu.Unlock()
	return nil
}

// Ban implements Limiter.
func (m *Memory) Ban(ctx context.Context, key string, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		d = m.block
	}
	if d <= 0 {
		d = DefaultBan
	}
	now := m.clock()
	sh := m.shard(key)
	sh.mu.Lock()
	sh.get(key, now, m.full).banned = addSat(now, d)
	sh.mu.Unlock()
	return nil
}

// Unban implements Limiter.
func (m *Memory) Unban(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sh := m.shard(key)
	sh.mu.Lock()
	if b := sh.buckets[key]; b != nil {
		b.banned = noBan
	}
	sh.mu.Unlock()
	return nil
}

// Sweep forgets every key that is unbanned and full at now, which changes
// no decision, and returns how many it dropped. now must come from the
// clock in Config.Now. It locks one shard at a time, for one pass over its
// keys.
func (m *Memory) Sweep(now time.Time) int {
	at := int64(now.Sub(m.epoch))
	dropped := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for key, b := range sh.buckets {
			if b.banned > at {
				continue
			}
			if b.level >= m.full || (at-b.at)/m.quantum >= ceilDiv(m.full-b.level, m.rate) {
				delete(sh.buckets, key)
				dropped++
			}
		}
		sh.mu.Unlock()
	}
	return dropped
}
