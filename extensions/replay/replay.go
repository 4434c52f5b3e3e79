// Package replay keeps, per topic, the last events published with their
// seq, so that a client reconnecting to any instance catches up on what it
// missed or is told that it cannot (PROTOCOL.md §5).
//
// A Store owns the topic's seq counter: Append assigns the next seq and
// stores the event in one atomic step, so every instance stamps the same
// seq and a reader never sees seq n+1 without seq n (the two-statement
// publish of the reference package's Postgres store broke both,
// extensions-study.md L-05, L-25).
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
// Planned beside this file: memory (one instance; counters live and die
// with the process), Redis (a sorted set and a counter per topic, written
// by one Lua script) and Postgres (durable rows, written by one
// statement). Each will run one conformance suite.
//
// # Errors
//
// Every error is a backend failure (unreachable, timed out, or ctx's). No
// sentinel is exported because callers do not branch: whatever fails, the
// gateway keeps live delivery going and answers the API with 503.
package replay

import (
	"context"
	"encoding/json"
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
	// (PROTOCOL.md §5.3): a separate Head call could see a seq appended
	// after Entries were read and make that event vanish.
	Head uint64

	// Truncated reports that the buffer does not cover the gap (Covers):
	// events after the seq asked for were evicted, expired or cleared, so
	// Entries does not start right after it.
	Truncated bool
}

// Covers reports whether a buffer whose oldest retained seq is oldest (0:
// empty) covers the gap (after, head], as PROTOCOL.md §5.2 defines it: when
// head ≤ after, or when the buffer is non-empty and oldest ≤ after+1.
// Otherwise the gap is truncated. An empty buffer behind an advanced
// counter does not cover, the case where the reference package lost
// messages silently (extensions-study.md L-17). Every backend decides
// Range.Truncated with it, so they agree.
func Covers(after, head, oldest uint64) bool {
	if head <= after {
		return true
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
	// entries and is never truncated.
	Since(ctx context.Context, topic string, after uint64) (Range, error)

	// Clear drops the topic's buffered entries but keeps its counter, so
	// seqs stay monotonic for the life of the store (PROTOCOL.md §5.1 rule
	// 6) and a client that resumes across the clear is told it was
	// truncated instead of silently missing events.
	Clear(ctx context.Context, topic string) error

	// ClearAll drops every topic's entries and counters, ending the life of
	// the store's seqs: they start again at 1, as after a memory store's
	// restart. It is an administrative reset (the API's DELETE /replay).
	ClearAll(ctx context.Context) error
}

// BusAppender is implemented by stores that publish the event to the bus in the same atomic step that
// assigns its seq, so every instance receives a buffered topic's events in seq order (PROTOCOL.md §5.1 rule 6)
// no matter how instances interleave. The event then reaches every instance, the appending one included,
// through the bus only: the caller must not deliver it locally.
type BusAppender interface {
	AppendAndPublish(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error)
}

// DefaultSize is the default Config.Size (PROTOCOL.md §8).
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

	// Now is the clock for TTL in the memory backend; Redis and Postgres
	// use the server's clock so instances with skewed clocks agree.
	// Default: time.Now.
	Now func() time.Time
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
