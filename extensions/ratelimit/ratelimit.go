// Package ratelimit limits how fast a key (a client IP, a connection, a
// user) may spend points, exactly across every instance, with optional bans
// (docs/configuration.md, rate_limit, docs/protocol.md §8).
//
// # The limit and its algorithms
//
// A key may spend Config.Points per Config.Interval on average, and at most
// Config.Burst at once. Each backend picks the algorithm that enforces this
// most cheaply on its storage; they make the same decisions, up to rounding:
//
//   - memory: a token bucket per key (tokens and the time of the last
//     refill, refilled continuously), swept once full and idle;
//   - Redis: GCRA, one theoretical-arrival-time value per key, computed in
//     one Lua script with the server's clock (Redis TIME, to the
//     microsecond), so instances with skewed clocks agree
//     (docs/design.md, lesson L-11). Its keys carry a version ("rl:v1:") so
//     that a later change of algorithm cannot misread them during a
//     rolling deploy (L-42; redis.go says what that costs meanwhile).
//
// The reference package used a fixed window, which lets 2×Points through
// around a window boundary; a bucket does not.
//
// # Concurrency
//
// A Limiter is safe for concurrent use, and Consume is atomic per key
// cluster-wide: of 20 concurrent consumes of 1 point against 5 points, 5
// are allowed, whatever instances they run on.
//
// # Backends
//
// Memory (memory.go) serves one instance; Redis (redis.go) serves a
// cluster, one Lua script run per Consume. Neither starts a goroutine or
// needs closing. Both run one conformance suite (ratelimit_test.go), the
// Redis backend its real-clock runs.
package ratelimit

import (
	"context"
	"time"
)

// Result is the outcome of one Consume.
type Result struct {
	// Allowed reports whether the points were spent.
	Allowed bool

	// Remaining is how many points the key can spend right after this call
	// (0 while banned).
	Remaining int

	// ResetAfter is, when Allowed, how long until the key is back to Burst
	// points; when not, how long until the same cost would be allowed (the
	// rest of the ban while banned). The API reports it as reset_ms.
	ResetAfter time.Duration
}

// Sweeper is implemented by a Limiter that forgets idle keys only when
// asked (Memory), instead of running a goroutine of its own: the gateway
// calls Sweep periodically, with the time of its Config.Now clock.
type Sweeper interface {
	Sweep(now time.Time) int
}

// Limiter spends and restores the points of keys. Keys are opaque strings;
// the caller builds them (for example "ip:203.0.113.9").
type Limiter interface {
	// Consume spends cost points of key if it has them and is not banned.
	// A refused Consume spends nothing; when Config.Block is set it also
	// bans the key for Block. cost must be at least 1; a cost above Burst is
	// never allowed. The check and the spend are one atomic step.
	Consume(ctx context.Context, key string, cost int) (Result, error)

	// Reset restores key to Burst points and lifts its ban.
	Reset(ctx context.Context, key string) error

	// Ban refuses every Consume of key for d, or for Config.Block when
	// d ≤ 0, or DefaultBan when both are 0. A ban replaces a shorter or
	// longer one in progress. Atomic: no Consume sees half a ban.
	Ban(ctx context.Context, key string, d time.Duration) error

	// Unban lifts key's ban and leaves its points as they are; unbanning a
	// key that is not banned changes nothing (and creates no state).
	Unban(ctx context.Context, key string) error
}

// Defaults of Config.
const (
	// DefaultPoints and DefaultInterval make the `rate_limit` option's
	// default of 10 frames per second per key.
	DefaultPoints   = 10
	DefaultInterval = time.Second
	// DefaultBan is the length of a Ban without a duration when Block is
	// 0, as in the reference package.
	DefaultBan = time.Minute
)

// Config is the limit every backend enforces; backend configs embed it. The
// zero value is the default configuration: 10 points per second, 10 at
// once, no automatic ban. docs/protocol.md §8's inbound limit per connection is
// Config{Points: 200, Interval: time.Second, Burst: 400}.
type Config struct {
	// Points is how many points a key may spend per Interval on average.
	// Default: DefaultPoints.
	Points int

	// Interval is the period Points refers to. Default: DefaultInterval.
	Interval time.Duration

	// Burst is how many points a key may spend at once, what it holds
	// after being idle. Default: Points, so "10 per second" allows 10 at
	// once, like the reference package's window.
	Burst int

	// Block bans a key for this long when a Consume is refused. Default: 0,
	// no automatic ban.
	Block time.Duration

	// Now is the clock of the memory backend; Redis uses the server's
	// clock. Default: time.Now.
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Points <= 0 {
		c.Points = DefaultPoints
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Burst <= 0 {
		c.Burst = c.Points
	}
	if c.Block < 0 {
		c.Block = 0
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
