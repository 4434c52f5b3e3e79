package ratelimit

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestMemory(t *testing.T) {
	testLimiter(t, func(t *testing.T, cfg Config) Limiter { return NewMemory(cfg) })
}

func TestMemoryRefillIsExactWithFractionalRates(t *testing.T) {
	// 3 points per second: one point every 333 333 333⅓ ns.
	clock := testsvc.NewClock()
	m := NewMemory(Config{Points: 3, Interval: time.Second, Now: clock.Now})
	expectResult(t, mustConsume(t, m, "k", 3), true, 0)
	r := mustConsume(t, m, "k", 1)
	if r.Allowed || r.ResetAfter != 333_333_334 {
		t.Fatalf("refused consume: %+v, want ResetAfter 333.333334ms", r)
	}
	clock.Advance(333_333_333)
	expectResult(t, mustConsume(t, m, "k", 1), false, 0)
	clock.Advance(1)
	expectResult(t, mustConsume(t, m, "k", 1), true, 0)
	// The ⅔ ns credited beyond that point are kept: after the rest of the
	// second, the bucket holds exactly 2 more points, not 1.
	clock.Advance(time.Second - 333_333_334)
	r = mustConsume(t, m, "k", 2)
	if !r.Allowed || r.Remaining != 0 || r.ResetAfter != time.Second {
		t.Fatalf("after one second in all: %+v, want 2 allowed, full again in 1s", r)
	}
}

func TestMemoryScalesHugeConfigsWithoutOverflow(t *testing.T) {
	for _, cfg := range []Config{
		{Points: 7, Interval: 48 * time.Hour, Burst: 1_000_000},
		{Points: math.MaxInt64, Interval: time.Nanosecond},
		{Points: 1, Interval: math.MaxInt64, Burst: math.MaxInt64},
		{Points: math.MaxInt64 - 1, Interval: math.MaxInt64, Burst: 3},
	} {
		clock := testsvc.NewClock()
		cfg.Now = clock.Now
		m := NewMemory(cfg)
		burst := cfg.Burst
		if burst == 0 {
			burst = cfg.Points
		}
		// Absurd bursts may be clamped, to more than 2^50 points.
		r := mustConsume(t, m, "k", 1)
		if !r.Allowed || r.Remaining < min(burst-1, 1<<50) || r.ResetAfter < 0 {
			t.Fatalf("%+v: first consume %+v", cfg, r)
		}
		clock.Advance(cfg.Interval)
		r = mustConsume(t, m, "k", 1)
		if !r.Allowed || r.ResetAfter < 0 {
			t.Fatalf("%+v: consume after an Interval %+v", cfg, r)
		}
	}
	// 7 per 48 h with a burst of a million: a point every 6h51m25.714s,
	// within the 100 ns quantum the scaling picks.
	clock := testsvc.NewClock()
	m := NewMemory(Config{Points: 7, Interval: 48 * time.Hour, Burst: 1_000_000, Now: clock.Now})
	expectResult(t, mustConsume(t, m, "k", 1_000_000), true, 0)
	r := mustConsume(t, m, "k", 1)
	if want := 48 * time.Hour / 7; r.Allowed || r.ResetAfter < want || r.ResetAfter > want+100 {
		t.Fatalf("refused: %+v, want ResetAfter ≈ %v", r, want)
	}
}

func TestMemoryClockGoingBackRefillsNothing(t *testing.T) {
	clock := testsvc.NewClock()
	m := NewMemory(Config{Points: 2, Interval: time.Second, Now: clock.Now})
	expectResult(t, mustConsume(t, m, "k", 2), true, 0)
	clock.Advance(-time.Hour)
	r := mustConsume(t, m, "k", 1)
	if r.Allowed || r.ResetAfter <= 0 {
		t.Fatalf("after the clock went back: %+v, want refused with a positive ResetAfter", r)
	}
	clock.Advance(time.Hour + time.Second/2)
	expectResult(t, mustConsume(t, m, "k", 1), true, 0)
}

func TestMemorySweepDropsOnlyFullUnbannedKeys(t *testing.T) {
	clock := testsvc.NewClock()
	m := NewMemory(Config{Points: 4, Interval: time.Second, Now: clock.Now})
	mustConsume(t, m, "untouched", 1) // full again after 250ms
	mustConsume(t, m, "drained", 4)   // full again after 1s
	mustBan(t, m, "banned", time.Hour)
	mustUnban(t, m, "never-seen") // creates nothing
	if n := m.Sweep(clock.Now()); n != 0 {
		t.Fatalf("Sweep dropped %d keys, none full", n)
	}
	clock.Advance(250 * time.Millisecond)
	if n := m.Sweep(clock.Now()); n != 1 {
		t.Fatalf("Sweep dropped %d keys, want 1 (untouched)", n)
	}
	clock.Advance(750 * time.Millisecond)
	if n := m.Sweep(clock.Now()); n != 1 {
		t.Fatalf("Sweep dropped %d keys, want 1 (drained)", n)
	}
	if got := keys(m); len(got) != 1 || got[0] != "banned" {
		t.Fatalf("keys left: %v, want [banned]", got)
	}
	expectResult(t, mustConsume(t, m, "banned", 1), false, 0)
	clock.Advance(time.Hour)
	if n := m.Sweep(clock.Now()); n != 1 {
		t.Fatalf("Sweep after the ban dropped %d keys, want 1", n)
	}
	expectResult(t, mustConsume(t, m, "banned", 1), true, 3)
}

func keys(m *Memory) []string {
	var out []string
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for k := range sh.buckets {
			out = append(out, k)
		}
		sh.mu.Unlock()
	}
	return out
}

func TestMemoryConsumeDoesNotAllocate(t *testing.T) {
	m := NewMemory(Config{Points: 1 << 30})
	ctx := context.Background()
	mustConsume(t, m, "k", 1)
	if n := testing.AllocsPerRun(100, func() { _, _ = m.Consume(ctx, "k", 1) }); n != 0 {
		t.Fatalf("Consume of a known key allocates %v times", n)
	}
}
