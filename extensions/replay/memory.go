package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"hash/maphash"
	"strings"
	"sync"
	"time"
)

// memoryShards spreads topics over this many locks, so that appends to
// different topics rarely wait for each other (cf's hub uses 64 shards for
// its subscriber maps for the same reason).
const memoryShards = 64

// Memory is the in-process Store, for a gateway running alone: counters
// live and die with the process. A restarted gateway gives the new store a
// Config.Base above every seq of the last one (ClockBase), so seqs never go
// backwards across the restart; clients resuming are told their history was
// truncated (docs/protocol.md §5.2).
//
// Each topic has a ring of at most Config.Size entries: once full, an
// Append overwrites the oldest slot, so it allocates nothing but its copy
// of the data. Its counter is kept until ClearAll, even when Clear or TTL
// empties the ring (about 100 bytes per topic ever appended to), because
// forgetting it would restart the topic's seqs at 1.
//
// TTL expiry is lazy: a read treats a topic idle for TTL as empty, and the
// next Append or a Sweep frees its entries. Memory starts no goroutine and
// needs no Close; a caller that sets a TTL should call Sweep periodically
// so that topics nobody appends to again give their memory back.
//
// Since hands out the stored Data slices themselves, not copies; callers
// must not modify them (the gateway only encodes them into frames).
type Memory struct {
	size  int
	base  uint64
	ttl   time.Duration
	now   func() time.Time
	epoch time.Time // times are kept as offsets from it, 8 bytes each
	seed  maphash.Seed

	shards [memoryShards]memoryShard
}

type memoryShard struct {
	mu     sync.RWMutex
	topics map[string]*ring
}

// ring is one topic's counter and buffer. Its entries are always the
// contiguous seqs head-len(entries)+1 .. head: Append adds head+1 and
// evicts the oldest, and Clear and expiry drop them all.
type ring struct {
	head    uint64
	entries []Entry       // grows up to Size, then reused as a circular buffer
	first   int           // index of the oldest entry in entries
	last    time.Duration // time of the last Append, as an offset from epoch
}

var (
	_ Store   = (*Memory)(nil)
	_ Sweeper = (*Memory)(nil)
)

// NewMemory returns an empty Memory store configured by cfg (zero fields
// take the defaults of Config.WithDefaults). cfg.Now is read at
// construction and on every Append and Since when cfg.TTL is set.
func NewMemory(cfg Config) *Memory {
	cfg = cfg.WithDefaults()
	m := &Memory{size: cfg.Size, base: cfg.Base, ttl: cfg.TTL, now: cfg.Now, epoch: cfg.Now(), seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].topics = make(map[string]*ring)
	}
	return m
}

func (m *Memory) shard(topic string) *memoryShard {
	return &m.shards[maphash.String(m.seed, topic)%memoryShards]
}

// clock returns the current time as an offset from epoch. Offsets taken
// from a time.Now clock are monotonic, so a wall-clock step neither expires
// a topic early nor keeps it forever.
func (m *Memory) clock() time.Duration {
	if m.ttl <= 0 {
		return 0
	}
	return m.now().Sub(m.epoch)
}

// Append implements Store. It copies data before taking the topic's lock,
// so a large payload delays no other topic's Append.
func (m *Memory) Append(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	data = bytes.Clone(data) // nil stays nil: null
	now := m.clock()
	sh := m.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := sh.topics[topic]
	if r == nil {
		r = &ring{head: m.base}
		// The map holds the key as long as the store lives: a topic sliced
		// from a larger string must not pin that string.
		sh.topics[strings.Clone(topic)] = r
	}
	if m.ttl > 0 {
		if r.expired(now, m.ttl) {
			r.drop()
		}
		// Concurrent Appends may read the clock in one order and lock in
		// the other; last only moves forward.
		r.last = max(r.last, now)
	}
	r.head++
	r.push(Entry{Seq: r.head, Event: r.intern(event), Data: data}, m.size)
	return r.head, nil
}

// Head implements Store.
func (m *Memory) Head(ctx context.Context, topic string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	sh := m.shard(topic)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if r := sh.topics[topic]; r != nil {
		return r.head, nil
	}
	return 0, nil
}

// Since implements Store. The entries share their Data with the store.
func (m *Memory) Since(ctx context.Context, topic string, after uint64) (Range, error) {
	if err := ctx.Err(); err != nil {
		return Range{}, err
	}
	now := m.clock()
	sh := m.shard(topic)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	r := sh.topics[topic]
	if r == nil {
		return Range{Truncated: !Covers(after, 0, 0)}, nil
	}
	entries := r.entries
	if r.expired(now, m.ttl) {
		entries = nil // freed by the next Append or Sweep, which hold the write lock
	}
	oldest := uint64(0)
	if len(entries) > 0 {
		oldest = r.head - uint64(len(entries)) + 1
	}
	rg := Range{Head: r.head, Truncated: !Covers(after, r.head, oldest)}
	if after >= r.head || len(entries) == 0 {
		return rg, nil
	}
	from := max(after+1, oldest)
	out := make([]Entry, r.head-from+1)
	start := (r.first + int(from-oldest)) % len(entries)
	n := copy(out, entries[start:])
	copy(out[n:], entries[:r.first])
	rg.Entries = out
	return rg, nil
}

// Clear implements Store.
func (m *Memory) Clear(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sh := m.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if r := sh.topics[topic]; r != nil {
		r.drop()
	}
	return nil
}

// ClearAll implements Store. Each shard is reset atomically; an Append
// racing with ClearAll lands either before its shard's reset (and is
// dropped) or after it (and gets seq 1).
func (m *Memory) ClearAll(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for _, r := range sh.topics {
			r.drop()
		}
		sh.mu.Unlock()
	}
	return nil
}

// Sweep frees the entries of every topic that has gone Config.TTL without
// an Append at now, and returns how many topics it emptied. Their counters
// stay. now must come from the clock in Config.Now. Without a TTL, Sweep
// does nothing. It locks one shard at a time, for one pass over its topics.
func (m *Memory) Sweep(now time.Time) int {
	if m.ttl <= 0 {
		return 0
	}
	at := now.Sub(m.epoch)
	swept := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for _, r := range sh.topics {
			if r.expired(at, m.ttl) {
				r.drop()
				swept++
			}
		}
		sh.mu.Unlock()
	}
	return swept
}

// expired reports whether the topic has entries and has gone ttl without
// an Append at now.
func (r *ring) expired(now, ttl time.Duration) bool {
	return ttl > 0 && len(r.entries) > 0 && now-r.last >= ttl
}

// drop empties the buffer and gives its memory back; head stays.
func (r *ring) drop() {
	r.entries, r.first = nil, 0
}

// push adds e as the newest entry, overwriting the oldest once size are
// buffered. The slice grows by doubling up to size, so a topic that only
// ever sees a few events does not pay for size slots.
func (r *ring) push(e Entry, size int) {
	if len(r.entries) < size {
		// Not full, so not wrapped: first is 0 and append keeps the order.
		if len(r.entries) == cap(r.entries) {
			grown := make([]Entry, len(r.entries), min(size, max(8, 2*cap(r.entries))))
			copy(grown, r.entries)
			r.entries = grown
		}
		r.entries = append(r.entries, e)
		return
	}
	r.entries[r.first] = e
	r.first++
	if r.first == len(r.entries) {
		r.first = 0
	}
}

// intern returns the newest entry's event name when it equals event, or a
// copy of event otherwise. A topic's events mostly repeat a few names, so
// the copy (which keeps a name sliced from a larger string from pinning
// it) is rarely paid: BenchmarkMemoryAppend measured 1 allocation per
// Append with it against 2 when cloning every name.
func (r *ring) intern(event string) string {
	if n := len(r.entries); n > 0 {
		newest := r.first - 1
		if newest < 0 {
			newest = n - 1
		}
		if prev := r.entries[newest].Event; prev == event {
			return prev
		}
	}
	return strings.Clone(event)
}
