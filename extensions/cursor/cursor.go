// Package cursor holds the shared cursor positions of each cursor topic
// across every instance (docs/protocol.md §6.2): one entry per connection, latest
// position wins, gone when the connection closes or its instance stops.
//
// The Tracker is the state a snapshot reads. Moves travel as frames: the
// instance owning a connection flushes its topic's changed entries at most
// once per Config.TopicThrottle, as one update or one bulk frame on
// "__cursor:<topic>", and relays that frame through the bus, so every
// instance sends the same bytes to its attached connections. Relaying one
// frame per flush instead of one per entry is what kept the reference
// package's cursors at frame rate (docs/design.md, lesson L-27).
//
// # Concurrency
//
// A Tracker is safe for concurrent use. The gateway serializes calls per
// connection (its key). Config.OnExpire is called from the Tracker's own
// goroutine, one call at a time, and must not block.
//
// # Backends
//
// Memory serves one instance. Redis serves a cluster sharing a Redis 7.0
// server or Cluster: a hash per topic, per-instance leases on the Redis
// clock, expired entries reaped by one live instance, which reports them
// through OnExpire; it starts a goroutine and must be closed (Redis.Close).
// Each runs one conformance suite (cursor_test.go). Throttle is the
// clock-free decision behind the per-connection and per-topic throttles.
package cursor

import (
	"context"
	"encoding/json"
	"time"
)

// Entry is one connection's cursor, the element of update, bulk and
// snapshot frames: {"key":…,"user":…,"data":…}.
type Entry struct {
	Key  string          // the connection's cluster-unique cursor key
	User json.RawMessage // public projection of the connection's identity
	Data json.RawMessage // the position, as the client sent it; nil means null
}

// ExpireFunc receives the keys of entries that expired on topic because
// their instance stopped refreshing them. It is called on one instance per
// expired entry, the one that removed it, so the gateway there publishes
// each remove frame once for the whole cluster. It must not block.
type ExpireFunc func(topic string, keys []string)

// Tracker stores cursor entries per topic. Topics and keys are opaque
// strings to it; the caller validates them.
type Tracker interface {
	// Update sets e as the entry of e.Key on topic, replacing the previous
	// one whole. The entry lives until Remove, or until Config.TTL after
	// its instance stops refreshing it.
	Update(ctx context.Context, topic string, e Entry) error

	// Remove deletes the entry of key on topic; a missing entry is not an
	// error. After Remove returns, List no longer returns the entry, so no
	// snapshot can show a cursor after its remove frame.
	Remove(ctx context.Context, topic, key string) error

	// List returns the live entries of topic, in no particular order.
	List(ctx context.Context, topic string) ([]Entry, error)
}

// Closer is implemented by a Tracker that holds goroutines or connections
// (Redis). Close stops them, bounded by ctx, and releases what the Tracker
// holds; the gateway calls it when it stops.
type Closer interface {
	Close(ctx context.Context) error
}

// ManyUpdater is implemented by Trackers that store several entries of a
// topic in one round trip (Redis: one script run); the gateway uses it for
// a flush that changed several cursors.
type ManyUpdater interface {
	// UpdateMany sets every entry of es on topic, as Update does each.
	UpdateMany(ctx context.Context, topic string, es []Entry) error
}

// Defaults and limits of Config (docs/protocol.md §6.2, §8).
const (
	DefaultTopicThrottle = 50 * time.Millisecond
	MinTopicThrottle     = 16 * time.Millisecond
	DefaultTTL           = 30 * time.Second

	// DefaultThrottle is the gateway's per-connection throttle: at most
	// one move per connection and topic per interval, one frame at 60 Hz.
	DefaultThrottle = 16 * time.Millisecond

	// DefaultMaxData is the largest cursor payload the gateway accepts,
	// in bytes of JSON.
	DefaultMaxData = 8192
)

// Config is the part of cursor configuration every backend shares; backend
// configs embed it. The zero value is the default configuration.
type Config struct {
	// TopicThrottle is the per-topic flush interval: changed entries are
	// sent at most once per interval, the first change after an idle
	// interval at once. Values below MinTopicThrottle (one frame at 60 Hz)
	// are raised to it: faster flushes cost frames without smoother motion.
	// Default: DefaultTopicThrottle.
	TopicThrottle time.Duration

	// TTL is how long the entries of an instance that stopped refreshing
	// them survive before they are removed and OnExpire is called.
	// Default: DefaultTTL.
	TTL time.Duration

	// OnExpire receives expired entries. Default: nil, expiry removes them
	// silently and clients keep the stale cursors until they reload.
	OnExpire ExpireFunc

	// Now is the clock for expiry in the memory backend; Redis uses the
	// server's clock. Default: time.Now.
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default, and
// TopicThrottle raised to MinTopicThrottle.
func (c Config) WithDefaults() Config {
	switch {
	case c.TopicThrottle <= 0:
		c.TopicThrottle = DefaultTopicThrottle
	case c.TopicThrottle < MinTopicThrottle:
		c.TopicThrottle = MinTopicThrottle
	}
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
