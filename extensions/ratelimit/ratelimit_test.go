package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Config
		want Config
	}{
		{"the zero Config allows 10 per second, 10 at once, no ban", Config{}, Config{Points: 10, Interval: time.Second, Burst: 10}},
		{"burst follows set points", Config{Points: 20}, Config{Points: 20, Interval: time.Second, Burst: 20}},
		{"set values are kept", Config{Points: 5, Interval: time.Minute, Burst: 7, Block: 30 * time.Second}, Config{Points: 5, Interval: time.Minute, Burst: 7, Block: 30 * time.Second}},
		{"negative values count as unset", Config{Points: -1, Interval: -1, Burst: -1, Block: -1}, Config{Points: 10, Interval: time.Second, Burst: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.Now == nil {
				t.Fatal("Now not set")
			}
			if got.Points != tc.want.Points || got.Interval != tc.want.Interval || got.Burst != tc.want.Burst || got.Block != tc.want.Block {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// limiterFactory returns a fresh Limiter enforcing cfg, which the factory
// closes in t.Cleanup. A backend on its server's clock cannot honour
// cfg.Now; its factory calls t.Skip when cfg.Now is set, as the suite sets
// it only in the controlled-clock runs of time-dependent subtests, whose
// real-clock runs every backend passes.
type limiterFactory func(t *testing.T, cfg Config) Limiter

// slow is an Interval long enough that no point refills while a subtest
// that does not wait runs, whatever the clock.
const slow = time.Hour

// testLimiter is the conformance suite every backend runs (docs/design.md, conventions §7).
// It uses only the Limiter interface and gives every test its own keys.
func testLimiter(t *testing.T, newLimiter limiterFactory) {
	t.Run("a fresh key spends Burst points, then is refused", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow})
		key := uniqueKey("fresh")
		for want := 4; want >= 0; want-- {
			r := mustConsume(t, l, key, 1)
			if !r.Allowed || r.Remaining != want {
				t.Fatalf("consume %d: %+v, want allowed with %d remaining", 5-want, r, want)
			}
			// Back to 5 points takes one Interval/Points per point spent.
			if spent := time.Duration(5 - want); r.ResetAfter <= 0 || r.ResetAfter > spent*slow/5 {
				t.Fatalf("consume %d: ResetAfter %v, want within (0, %v]", 5-want, r.ResetAfter, spent*slow/5)
			}
		}
		r := mustConsume(t, l, key, 1)
		if r.Allowed || r.Remaining != 0 || r.ResetAfter <= 0 || r.ResetAfter > slow/5 {
			t.Fatalf("consume 6: %+v, want refused, 0 remaining, ResetAfter within (0, %v]", r, slow/5)
		}
	})

	t.Run("concurrent consumes allow exactly the points there are", func(t *testing.T) {
		for _, tc := range []struct {
			name                 string
			points, burst, cost  int
			goroutines, nAllowed int
		}{
			{"64 consumes of 1 against 10 points", 10, 0, 1, 64, 10},
			{"20 consumes of 1 against 5 points", 5, 0, 1, 20, 5},
			{"64 consumes of 1 against a burst of 20", 5, 20, 1, 64, 20},
			{"64 consumes of 3 against 10 points", 10, 0, 3, 64, 3},
		} {
			t.Run(tc.name, func(t *testing.T) {
				l := newLimiter(t, Config{Points: tc.points, Burst: tc.burst, Interval: slow})
				key := uniqueKey("parallel")
				results := make([]Result, tc.goroutines)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for i := range results {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						r, err := l.Consume(context.Background(), key, tc.cost)
						if err != nil {
							t.Errorf("Consume: %v", err)
						}
						results[i] = r
					}()
				}
				close(start)
				wg.Wait()
				var remaining []int
				for _, r := range results {
					if r.Allowed {
						remaining = append(remaining, r.Remaining)
					}
				}
				// Each allowed consume saw the points the previous left.
				slices.Sort(remaining)
				burst := max(tc.burst, tc.points)
				var want []int
				for i := range tc.nAllowed {
					want = append(want, burst-tc.cost*(tc.nAllowed-i))
				}
				if !slices.Equal(remaining, want) {
					t.Fatalf("allowed consumes left %v points, want %v", remaining, want)
				}
			})
		}
	})

	t.Run("a cost above 1 spends that many points", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 10, Interval: slow})
		key := uniqueKey("cost")
		expectResult(t, mustConsume(t, l, key, 3), true, 7)
		expectResult(t, mustConsume(t, l, key, 7), true, 0)
		expectResult(t, mustConsume(t, l, key, 1), false, 0)
	})

	t.Run("a refused consume spends nothing", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 10, Interval: slow})
		key := uniqueKey("refused")
		expectResult(t, mustConsume(t, l, key, 8), true, 2)
		expectResult(t, mustConsume(t, l, key, 3), false, 2)
		expectResult(t, mustConsume(t, l, key, 2), true, 0)
	})

	t.Run("a cost above Burst is never allowed", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow})
		key := uniqueKey("above-burst")
		expectResult(t, mustConsume(t, l, key, 6), false, 5)
		expectResult(t, mustConsume(t, l, key, 5), true, 0)

		l = newLimiter(t, Config{Points: 5, Burst: 8, Interval: slow})
		key = uniqueKey("above-burst")
		expectResult(t, mustConsume(t, l, key, 9), false, 8)
		expectResult(t, mustConsume(t, l, key, 8), true, 0)
	})

	t.Run("a cost below 1 is an error and spends nothing", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 3, Interval: slow})
		key := uniqueKey("cost-zero")
		for _, cost := range []int{0, -1} {
			if r, err := l.Consume(context.Background(), key, cost); err == nil {
				t.Fatalf("Consume(cost %d) = %+v, want an error", cost, r)
			}
		}
		expectResult(t, mustConsume(t, l, key, 3), true, 0)
	})

	t.Run("keys are isolated", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 2, Interval: slow})
		base := uniqueKey("iso")
		// Names a backend could confuse when it builds keys by concatenation.
		a, b, c := base, base+":", "v1:"+base
		expectResult(t, mustConsume(t, l, a, 2), true, 0)
		expectResult(t, mustConsume(t, l, b, 1), true, 1)
		mustBan(t, l, a, slow)
		expectResult(t, mustConsume(t, l, c, 1), true, 1)
		mustReset(t, l, b)
		expectResult(t, mustConsume(t, l, a, 1), false, 0) // still banned
		expectResult(t, mustConsume(t, l, b, 2), true, 0)
		expectResult(t, mustConsume(t, l, c, 1), true, 0)
	})

	t.Run("Reset restores Burst and lifts the ban", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 3, Interval: slow})
		key := uniqueKey("reset")
		expectResult(t, mustConsume(t, l, key, 3), true, 0)
		mustReset(t, l, key)
		expectResult(t, mustConsume(t, l, key, 1), true, 2)
		mustBan(t, l, key, slow)
		mustReset(t, l, key)
		expectResult(t, mustConsume(t, l, key, 1), true, 2)
		mustReset(t, l, uniqueKey("reset-never"))
	})

	t.Run("a ban refuses every consume and spends nothing", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow})
		key := uniqueKey("ban")
		expectResult(t, mustConsume(t, l, key, 2), true, 3)
		mustBan(t, l, key, slow)
		for range 3 {
			r := mustConsume(t, l, key, 1)
			expectResult(t, r, false, 0)
			expectWithin(t, r.ResetAfter, slow-time.Minute, slow)
		}
		mustUnban(t, l, key)
		expectResult(t, mustConsume(t, l, key, 1), true, 2)
	})

	t.Run("a ban replaces the one in progress", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow})
		key := uniqueKey("reban")
		mustBan(t, l, key, slow)
		mustBan(t, l, key, time.Minute)
		expectWithin(t, mustConsume(t, l, key, 1).ResetAfter, 50*time.Second, time.Minute)
		mustBan(t, l, key, slow)
		expectWithin(t, mustConsume(t, l, key, 1).ResetAfter, slow-time.Minute, slow)
	})

	t.Run("a ban without a duration lasts Block, or DefaultBan", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow, Block: 30 * time.Minute})
		key := uniqueKey("ban-block")
		mustBan(t, l, key, 0)
		expectWithin(t, mustConsume(t, l, key, 1).ResetAfter, 29*time.Minute, 30*time.Minute)

		l = newLimiter(t, Config{Points: 5, Interval: slow})
		key = uniqueKey("ban-default")
		mustBan(t, l, key, -time.Second)
		expectWithin(t, mustConsume(t, l, key, 1).ResetAfter, DefaultBan-10*time.Second, DefaultBan)
	})

	t.Run("Unban of a key not banned changes nothing", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 5, Interval: slow})
		key := uniqueKey("unban")
		expectResult(t, mustConsume(t, l, key, 2), true, 3)
		mustUnban(t, l, key)
		expectResult(t, mustConsume(t, l, key, 1), true, 2)
		never := uniqueKey("unban-never")
		mustUnban(t, l, never)
		expectResult(t, mustConsume(t, l, never, 1), true, 4)
	})

	t.Run("Block bans a key at its first refusal", func(t *testing.T) {
		l := newLimiter(t, Config{Points: 2, Interval: slow, Block: slow / 2})
		key := uniqueKey("block")
		expectResult(t, mustConsume(t, l, key, 2), true, 0)
		r := mustConsume(t, l, key, 1)
		expectResult(t, r, false, 0)
		expectWithin(t, r.ResetAfter, slow/2-time.Minute, slow/2)
		// A consume refused by the ban does not extend it.
		again := mustConsume(t, l, key, 1)
		expectResult(t, again, false, 0)
		expectWithin(t, again.ResetAfter, slow/2-time.Minute, r.ResetAfter)
		mustReset(t, l, key)
		expectResult(t, mustConsume(t, l, key, 1), true, 1)

		// A cost above Burst is a refusal like any other.
		other := uniqueKey("block-above-burst")
		expectResult(t, mustConsume(t, l, other, 3), false, 0)
		expectResult(t, mustConsume(t, l, other, 1), false, 0)
	})

	t.Run("a done context is refused", func(t *testing.T) {
		l := newLimiter(t, Config{})
		key := uniqueKey("canceled")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.Consume(ctx, key, 1); !errors.Is(err, context.Canceled) {
			t.Errorf("Consume returned %v, want context.Canceled", err)
		}
		if err := l.Reset(ctx, key); !errors.Is(err, context.Canceled) {
			t.Errorf("Reset returned %v, want context.Canceled", err)
		}
		if err := l.Ban(ctx, key, time.Second); !errors.Is(err, context.Canceled) {
			t.Errorf("Ban returned %v, want context.Canceled", err)
		}
		if err := l.Unban(ctx, key); !errors.Is(err, context.Canceled) {
			t.Errorf("Unban returned %v, want context.Canceled", err)
		}
	})

	// Time-dependent behaviour: 4 points per 400 ms is one point per 100 ms,
	// short enough for the real-clock runs.
	const points, interval = 4, 400 * time.Millisecond
	const perPoint = interval / points

	forEachClock(t, "points refill at Points per Interval up to Burst", newLimiter, func(t *testing.T, clk testClock, l func(Config) Limiter) {
		lim := l(Config{Points: points, Interval: interval})
		key := uniqueKey("refill")
		start := time.Now()
		clk.result(t, mustConsume(t, lim, key, points), true, 0)
		r := mustConsume(t, lim, key, 1)
		clk.settled(t, start, perPoint)
		clk.result(t, r, false, 0)
		clk.expect(t, "ResetAfter of a refused consume", r.ResetAfter, perPoint)
		wait := perPoint
		if clk.exact() {
			clk.advance(perPoint - time.Nanosecond)
			r := mustConsume(t, lim, key, 1)
			clk.result(t, r, false, 0)
			clk.expect(t, "ResetAfter a nanosecond early", r.ResetAfter, time.Nanosecond)
			wait = time.Nanosecond
		}
		var got Result
		clk.passes(t, wait, func() bool { got = mustConsume(t, lim, key, 1); return got.Allowed })
		clk.result(t, got, true, 0)
		clk.expect(t, "ResetAfter of an empty bucket", got.ResetAfter, interval)

		// Idle for far longer than a refill: Burst, and no more.
		clk.passes(t, 10*interval, func() bool {
			start = time.Now()
			got = mustConsume(t, lim, key, points)
			return got.Allowed
		})
		clk.result(t, got, true, 0)
		r = mustConsume(t, lim, key, points)
		clk.settled(t, start, interval)
		clk.result(t, r, false, 0)
	})

	forEachClock(t, "a refused consume reports when its cost would be allowed", newLimiter, func(t *testing.T, clk testClock, l func(Config) Limiter) {
		lim := l(Config{Points: points, Interval: interval})
		key := uniqueKey("retry-after")
		start := time.Now()
		clk.result(t, mustConsume(t, lim, key, 3), true, 1)
		r := mustConsume(t, lim, key, 3)
		clk.settled(t, start, 2*perPoint)
		clk.result(t, r, false, 1)
		clk.expect(t, "ResetAfter for 2 missing points", r.ResetAfter, 2*perPoint)
		var got Result
		clk.passes(t, r.ResetAfter, func() bool { got = mustConsume(t, lim, key, 3); return got.Allowed })
		clk.result(t, got, true, 0)
	})

	forEachClock(t, "an allowed consume reports the time until Burst", newLimiter, func(t *testing.T, clk testClock, l func(Config) Limiter) {
		lim := l(Config{Points: points, Interval: interval})
		key := uniqueKey("reset-after")
		r := mustConsume(t, lim, key, 1)
		clk.result(t, r, true, 3)
		clk.expect(t, "ResetAfter after 1 point", r.ResetAfter, perPoint)
		r = mustConsume(t, lim, key, 2)
		clk.result(t, r, true, 1)
		clk.expect(t, "ResetAfter after 3 points", r.ResetAfter, 3*perPoint)
	})

	forEachClock(t, "a Block ban ends after Block", newLimiter, func(t *testing.T, clk testClock, l func(Config) Limiter) {
		const block = 500 * time.Millisecond
		lim := l(Config{Points: points, Interval: interval, Block: block})
		key := uniqueKey("block-ends")
		start := time.Now()
		clk.result(t, mustConsume(t, lim, key, points), true, 0)
		r := mustConsume(t, lim, key, 1)
		clk.settled(t, start, perPoint)
		clk.result(t, r, false, 0)
		clk.expect(t, "ResetAfter of the ban", r.ResetAfter, block)
		wait := block
		if clk.exact() {
			clk.advance(block - time.Nanosecond)
			r := mustConsume(t, lim, key, 1)
			clk.result(t, r, false, 0)
			clk.expect(t, "ResetAfter a nanosecond before the ban ends", r.ResetAfter, time.Nanosecond)
			wait = time.Nanosecond
		}
		// The bucket kept refilling during the ban: it is full again.
		var got Result
		clk.passes(t, wait, func() bool { got = mustConsume(t, lim, key, 1); return got.Allowed })
		clk.result(t, got, true, points-1)
	})

	forEachClock(t, "a ban ends after its duration with the points it had", newLimiter, func(t *testing.T, clk testClock, l func(Config) Limiter) {
		lim := l(Config{Points: points, Interval: slow})
		key := uniqueKey("ban-ends")
		clk.result(t, mustConsume(t, lim, key, 1), true, points-1)
		const ban = 300 * time.Millisecond
		start := time.Now()
		mustBan(t, lim, key, ban)
		r := mustConsume(t, lim, key, 1)
		clk.settled(t, start, ban)
		clk.result(t, r, false, 0)
		clk.expect(t, "ResetAfter of the ban", r.ResetAfter, ban)
		var got Result
		clk.passes(t, ban, func() bool { got = mustConsume(t, lim, key, 1); return got.Allowed })
		clk.result(t, got, true, points-2)
	})
}

// testClock is the clock of one run of a time-dependent subtest: a
// controlled clock that the test advances, or the real one, which the test
// waits for.
type testClock struct {
	fake *testsvc.Clock // nil: the real clock
}

// exact reports whether the clock is controlled, so that durations can be
// checked to the nanosecond.
func (c testClock) exact() bool { return c.fake != nil }

// advance moves a controlled clock by d.
func (c testClock) advance(d time.Duration) { c.fake.Advance(d) }

// settled skips a real-clock run when the calls since start took half of
// window or more: the state the test is about to check (a point not yet
// refilled, a ban not yet over) may then have changed, on a machine too
// busy for this run. A controlled clock never moves on its own.
func (c testClock) settled(t testing.TB, start time.Time, window time.Duration) {
	t.Helper()
	if took := time.Since(start); c.fake == nil && took >= window/2 {
		t.Skipf("real clock: calls took %v, the test assumes under %v", took, window/2)
	}
}

// passes lets d pass and checks cond: a controlled clock is advanced by d
// and cond must then hold at once; on the real clock, cond is polled until
// it holds.
func (c testClock) passes(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	if c.fake == nil {
		testsvc.WaitFor(t, d+5*time.Second, "the condition on the real clock", cond)
		return
	}
	c.fake.Advance(d)
	if !cond() {
		t.Fatalf("not so once %v passed", d)
	}
}

// result checks a Consume's result: exactly on a controlled clock; on the
// real one, points may have refilled since the state the test expects, so
// Remaining may be higher.
func (c testClock) result(t testing.TB, r Result, allowed bool, remaining int) {
	t.Helper()
	if r.Allowed != allowed || r.Remaining < remaining || c.fake != nil && r.Remaining != remaining {
		t.Fatalf("got %+v, want Allowed %v with %d remaining", r, allowed, remaining)
	}
}

// expect checks a duration the limiter reported: exactly want on a
// controlled clock, within (0, want] on the real one, where time passed
// since the state it describes.
func (c testClock) expect(t testing.TB, what string, got, want time.Duration) {
	t.Helper()
	if c.fake != nil && got != want || got <= 0 || got > want {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
}

// forEachClock runs test as a subtest named name, with a controlled clock
// and with the real one.
func forEachClock(t *testing.T, name string, newLimiter limiterFactory, test func(t *testing.T, clk testClock, l func(Config) Limiter)) {
	t.Run(name, func(t *testing.T) {
		t.Run("controlled clock", func(t *testing.T) {
			clk := testClock{fake: testsvc.NewClock()}
			test(t, clk, func(cfg Config) Limiter {
				cfg.Now = clk.fake.Now
				return newLimiter(t, cfg)
			})
		})
		t.Run("real clock", func(t *testing.T) {
			test(t, testClock{}, func(cfg Config) Limiter { return newLimiter(t, cfg) })
		})
	})
}

var keySerial atomic.Int64

// uniqueKey returns a key no other test of this process or of a concurrent
// one uses.
func uniqueKey(name string) string {
	return fmt.Sprintf("test:%s:%d:%d", name, os.Getpid(), keySerial.Add(1))
}

func mustConsume(t testing.TB, l Limiter, key string, cost int) Result {
	t.Helper()
	r, err := l.Consume(context.Background(), key, cost)
	if err != nil {
		t.Fatalf("Consume(%s, %d): %v", key, cost, err)
	}
	return r
}

func mustBan(t testing.TB, l Limiter, key string, d time.Duration) {
	t.Helper()
	if err := l.Ban(context.Background(), key, d); err != nil {
		t.Fatalf("Ban(%s, %v): %v", key, d, err)
	}
}

func mustUnban(t testing.TB, l Limiter, key string) {
	t.Helper()
	if err := l.Unban(context.Background(), key); err != nil {
		t.Fatalf("Unban(%s): %v", key, err)
	}
}

func mustReset(t testing.TB, l Limiter, key string) {
	t.Helper()
	if err := l.Reset(context.Background(), key); err != nil {
		t.Fatalf("Reset(%s): %v", key, err)
	}
}

func expectResult(t testing.TB, r Result, allowed bool, remaining int) {
	t.Helper()
	if r.Allowed != allowed || r.Remaining != remaining {
		t.Fatalf("got %+v, want Allowed %v with %d remaining", r, allowed, remaining)
	}
}

// expectWithin checks that d is within (lo, hi]; time passes between the
// state the limiter reports and the check, so bounds are what the suite
// can check on any clock.
func expectWithin(t testing.TB, d, lo, hi time.Duration) {
	t.Helper()
	if d <= lo || d > hi {
		t.Fatalf("ResetAfter %v, want within (%v, %v]", d, lo, hi)
	}
}
