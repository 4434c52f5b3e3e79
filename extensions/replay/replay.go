// Package replay keeps, per topic, the last events published with their
// seq, so that a client reconnecting to any instance catches up on what it
// missed or is told that it cannot (docs/protocol.md §5).
//
// A Store owns the topic's seq counter: Append assigns the next seq and
// stores the event in one atomic step, so every instance stamps the same
// seq and a reader never sees seq n+1 without seq n (the two-statement
// publish of the reference package's Postgres store broke both,
// docs/design.md, lesson L-05, L-25).
//
// # Concurrency
//
// A Store is safe for concurrent use. Appends to one topic are linearized:
// seqs are contiguous and a Since that returns seq n also returns every
// buffered seq below it. A Store calls nothing back and starts no work that
// outlives a call, except a backend's own expiry sweep, which its Close
// stops.
//
// # Backends
//
// Beside this file: memory (one instance; counters live with the process),
// Redis (a sorted set and a counter per topic, written by one Lua script)
// and Postgres (durable rows, written by one statement). Each runs the
// conformance suite of replay_test.go.
//
// # Errors
//
// Every error is a backend failure (unreachable, timed out, or ctx's):
// whatever fails, the gateway keeps live delivery going and answers the
// API with 503. The one sentinel, ErrUnpublished, marks an event that was
// stored although its publish failed.
package replay

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Entry is one buffered event.
type Entry struct {
	Seq   uint64
	Event string
	Data  json.RawMessage // stored and returned byte for byte; nil means null
}

// Range is what a Store holds for a topic after a given seq, read as one
// consistent snapshot.
type Range struct {
	// Entries are the buffered events with seq above the one asked for, in
	// increasing, contiguous seq order; when there are any, the last is
	// Head.
	Entries []Entry

	// Head is the topic's last assigned seq (0: none yet), read in the same
	// snapshot as Entries. Resume attaches live delivery after it
	// (docs/protocol.md §5.3): a separate Head call could see a seq appended
	// after Entries were read and make that event vanish.
	Head uint64

	// Truncated reports that the buffer does not cover the gap (Covers):
	// events after the seq asked for were evicted, expired or cleared, so
	// Entries does not start right after it.
	Truncated bool
}

// Covers reports whether a buffer whose oldest retained seq is oldest (0:
// empty) covers the gap (after, head], as docs/protocol.md §5.2 defines it: when
// head = after, or when the buffer is non-empty and oldest ≤ after+1.
// Otherwise the gap is truncated. An empty buffer behind an advanced
// counter does not cover, the case where the reference package lost
// messages silently (docs/design.md, lesson L-17). Neither does a head below
// after: a client can only hold a seq the store never reached if the store
// lost its history, and what it missed since is unknown. Every backend
// decides Range.Truncated with it, so they agree.
func Covers(after, head, oldest uint64) bool {
	switch {
	case head == after:
		return true
	case head < after:
		return false
	}
	return oldest != 0 && oldest <= after+1
}

// Store is a per-topic replay buffer with its seq counter. Topics are valid
// wire topics (the caller checks); a Store treats them as opaque keys.
type Store interface {
	// Append assigns the topic's next seq (previous+1, starting at 1),
	// stores (seq, event, data) and evicts the oldest entries beyond
	// Config.Size, all in one atomic step, and returns the seq. Concurrent
	// Appends to one topic get distinct, contiguous seqs. data is stored
	// byte for byte. On error no seq is assigned, or one is and the event
	// is stored: a failed Append never leaves a seq without its event, so a
	// reader never reports a gap that did not happen.
	Append(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error)

	// Head returns the topic's last assigned seq, 0 if none. It is the
	// value a page load starts from (the API's GET /seq).
	Head(ctx context.Context, topic string) (uint64, error)

	// Since returns the buffered entries with seq > after, with the head
	// and the truncation flag of the same snapshot. after ≥ head returns no
	// entries; after > head is truncated (Covers).
	Since(ctx context.Context, topic string, after uint64) (Range, error)

	// Clear drops the topic's buffered entries but keeps its counter, so
	// seqs stay monotonic for the life of the store (docs/protocol.md §5.1 rule
	// 6) and a client that resumes across the clear is told it was
	// truncated instead of silently missing events.
	Clear(ctx context.Context, topic string) error

	// ClearAll drops every topic's entries, as Clear does one topic's: the
	// counters stay, so subscribers on every instance keep a gap-free
	// stream and a resume across it is truncated. It is the API's
	// DELETE /replay.
	ClearAll(ctx context.Context) error
}

// BusAppender is implemented by stores that publish each appended event on
// the bus themselves: every instance, the appending one included, then
// receives a buffered topic's events from the bus only, and the caller
// must not deliver them locally. The Redis store stores and publishes in
// one atomic script, so the bus carries a topic's events in seq order; a
// Postgres store publishes after its commit, so concurrent appends may
// arrive out of order. Either way a receiver that sees a seq skip fills
// it from the store (docs/protocol.md §5.1 rule 7). An error wrapping
// ErrUnpublished comes with the seq of an event that was stored.
type BusAppender interface {
	AppendAndPublish(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error)
}

// Observer is implemented by shared stores (Redis, Postgres) that remember
// the seqs they have seen issued, so that their counters survive a loss of
// the store's data: after a restart without persistence, a flush, a
// failover to a replica that lagged or a deleted key, the next Append
// continues LossMargin above the highest seq this process saw instead of
// issuing seqs a second time (docs/protocol.md §5.2). A store sees its own
// Appends; the gateway reports through Observe the seqs that other
// instances appended and it received on the bus. Observe never blocks.
type Observer interface {
	Observe(topic string, seq uint64)
}

// Sweeper is implemented by a store that frees expired buffers only when
// asked (Memory), instead of running a goroutine of its own: the gateway
// calls Sweep periodically, with the time of its Config.Now clock.
type Sweeper interface {
	Sweep(now time.Time) int
}

// Cleaner is implemented by a store that deletes expired buffers with a
// query (Postgres): the gateway calls Cleanup periodically, with a
// deadline, and Cleanup returns how many entries it deleted.
type Cleaner interface {
	Cleanup(ctx context.Context) (int64, error)
}

// LossMargin is how far above the highest seq it saw a shared store's
// counter continues after a loss of its data. Other instances may have
// issued seqs this process had not received yet when the data was lost;
// the margin keeps the new seqs above them. The skipped seqs never name an
// event: readers report them truncated.
const LossMargin = 1000

// ErrUnpublished means AppendAndPublish stored the event under the seq it
// returned but could not publish it on the bus. The event is not lost: the
// gateways fill it from the store when the bus is back.
var ErrUnpublished = errors.New("stored but not published")

// DefaultSize is the default Config.Size (docs/protocol.md §8).
const DefaultSize = 1000

// Config is the part of a Store's configuration every backend shares;
// backend configs embed it. The zero value is the default configuration.
type Config struct {
	// Size is how many entries a topic keeps; Append evicts the oldest
	// beyond it. Default: DefaultSize.
	Size int

	// TTL drops a topic's entries once it has gone that long without an
	// Append, so idle topics do not hold their events forever. The counter
	// stays, as with Clear, so a client resuming later is told it was
	// truncated. Default: 0, entries never expire.
	TTL time.Duration

	// Base is where a memory store's counters start: a topic's first seq
	// is Base+1. A gateway restarted on the same machine passes ClockBase,
	// so the seqs of its new life stay above those of its last one
	// (docs/protocol.md §5.2). Redis and Postgres ignore it: their counters
	// outlive the process. Default: 0.
	Base uint64

	// Now is the clock for TTL in the memory backend; Redis and Postgres
	// use the server's clock so instances with skewed clocks agree.
	// Default: time.Now.
	Now func() time.Time
}

// clockEpoch is where ClockBase counts from.
var clockEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ClockBase is a counter base derived from the clock: the microseconds
// since 2024-01-01 UTC. Counters restarted from it continue above every seq
// issued since an earlier ClockBase, as long as a topic averaged fewer than
// a million appends per second in between (the Redis store does about
// 130 000 a second on one core). It stays below 2^53 − 1, the largest
// integer a JavaScript client holds exactly, until the year 2309.
func ClockBase(now time.Time) uint64 {
	d := now.Sub(clockEpoch)
	if d <= 0 {
		return 0
	}
	return uint64(d / time.Microsecond)
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Size <= 0 {
		c.Size = DefaultSize
	}
	if c.TTL < 0 {
		c.TTL = 0
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
