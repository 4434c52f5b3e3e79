// Package presence tracks who is present on each topic across every
// instance, counting a user once however many tabs and instances they are
// connected through (docs/protocol.md §6.1).
//
// A member is a key (the user's presence key, or "__conn:<connection id>"
// for an anonymous connection; keys are cluster-unique) with its data, the
// public projection of the user's identity. A member is present while any
// of its connections, on any instance, has joined the topic. The Tracker
// holds membership; the gateway turns changes into presence_state,
// presence_diff, list, join and leave frames for each connection's
// vocabulary.
//
// # Concurrency
//
// A Tracker is safe for concurrent use. The gateway serializes Join and
// Leave per connection and topic; calls for different connections, even of
// one key, may run concurrently, and the Tracker decides atomically which
// of them is the key's first join or last leave. Config.OnChange is called
// from the Tracker's own goroutine, one call at a time, and must not block.
//
// # Crashed instances
//
// Each instance refreshes its connections' entries every Config.Refresh.
// When an instance stops (crash, network split), its entries expire after
// Config.TTL, and every other instance is told through OnChange, so clients
// see the leave (docs/protocol.md §6.1). The reference package never sent those
// leaves (docs/design.md, lesson K-6).
//
// # Backends
//
// Memory serves one instance. Redis serves a cluster sharing a Redis 7.0
// server or Cluster: one hash slot per topic, O(1) scripts for Join and
// Leave, expiry by per-instance leases on the Redis clock (not Redis 7.4's
// per-field HPEXPIRE), changes relayed on a Pub/Sub channel; it starts
// goroutines and must be closed (Redis.Close). Each runs one conformance
// suite (presence_test.go).
package presence

import (
	"context"
	"encoding/json"
	"time"
)

// Member is one present key and its data.
type Member struct {
	Key  string
	Data json.RawMessage // the member's public projection, a JSON object; nil means null
}

// Kind says how a member changed.
type Kind uint8

// The kinds of change.
const (
	// NoChange: the member was already present with the same data, or
	// another of its connections remains.
	NoChange Kind = iota
	// Joined: the key's first connection anywhere joined.
	Joined
	// Updated: a connection of a present key joined with different data;
	// the member's data is now that data (docs/protocol.md §6.1: a data change
	// is a join for current clients and a fresh list for legacy ones).
	Updated
	// Left: the key's last connection anywhere left or expired.
	Left
)

var kindNames = [...]string{"no change", "joined", "updated", "left"}

// String returns the kind's name for logs and test failures.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Change is one member's change on one topic.
type Change struct {
	Topic string
	Kind  Kind
	// Member is the member after the change; for Left, its last data,
	// which legacy leave frames carry.
	Member Member
}

// ChangeFunc receives changes the caller's Tracker did not return itself:
// joins, updates and leaves made through other instances' Trackers, and
// leaves of members whose instance stopped refreshing them. Every instance
// receives each such change once; changes of one key arrive in the order
// they happened. It is called from the Tracker's own goroutine, one call at
// a time, and must not block: the gateway only queues frames in it.
type ChangeFunc func(changes []Change)

// Closer is implemented by a Tracker that holds goroutines or connections
// (Redis). Close stops them, bounded by ctx, and releases what the Tracker
// holds; the gateway calls it when it stops.
type Closer interface {
	Close(ctx context.Context) error
}

// Tracker is the cluster-wide membership of presence topics. Topics and
// keys are opaque strings to it; the caller validates them.
type Tracker interface {
	// Join records that connection connID of key is present on topic with
	// data, and reports what that changed for the member: Joined if no
	// connection of key was present anywhere, Updated if one was and its
	// data differed (byte for byte), else NoChange. A member's data is the
	// data of its latest Join. Joining again with the same connID only
	// updates the data. The decision and the write are one atomic step
	// cluster-wide, so of two first joins racing on two instances exactly
	// one reports Joined. On error nothing was recorded.
	Join(ctx context.Context, topic, key, connID string, data json.RawMessage) (Change, error)

	// Leave removes connection connID of key from topic and reports Left,
	// with the member's last data, if it was the key's last connection
	// anywhere, else NoChange (also when connID was not present). It is
	// atomic like Join. On error the connection may still be recorded; it
	// then expires after Config.TTL like a crashed instance's.
	Leave(ctx context.Context, topic, key, connID string) (Change, error)

	// List returns the members present on topic, in no particular order.
	// Members whose entries have expired are never listed.
	List(ctx context.Context, topic string) ([]Member, error)

	// Count returns the number of members present on topic, as List would.
	Count(ctx context.Context, topic string) (int, error)
}

// Defaults of Config (docs/protocol.md §8).
const (
	DefaultTTL     = 90 * time.Second
	DefaultRefresh = 30 * time.Second

	// DefaultHeartbeat is how often the gateway sends a presence topic's
	// members and observers the heartbeat frame listing the present keys.
	DefaultHeartbeat = 30 * time.Second

	// DefaultKey is the field of a member's data that names the member.
	DefaultKey = "id"
)

// Config is the part of a Tracker's configuration every backend shares;
// backend configs embed it. The zero value is the default configuration.
type Config struct {
	// TTL is how long the entries of an instance that stopped refreshing
	// them survive: its members leave within TTL of its crash.
	// Default: DefaultTTL.
	TTL time.Duration

	// Refresh is how often an instance refreshes its entries; it must be
	// below TTL, or live members expire between refreshes (constructors
	// refuse such a Config). Default: DefaultRefresh, or TTL/3 when that
	// is shorter.
	Refresh time.Duration

	// OnChange receives the changes made elsewhere. Default: nil, they are
	// not reported.
	OnChange ChangeFunc

	// Now is the clock for expiry in the memory backend; Redis uses the
	// server's clock so instances with skewed clocks agree.
	// Default: time.Now.
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.Refresh <= 0 {
		c.Refresh = min(DefaultRefresh, c.TTL/3)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
