// Package tally delivers a message on every instance of a cluster and
// collects how many local connections it reached on each, so that the HTTP
// API can answer a direct send or a group publish with the cluster's count
// (docs/api.md §2).
//
// The instance that asks delivers locally itself and counts that part; a
// Tally carries the message to the other instances, each of which delivers
// it through its Handler and answers its count to the asker. Ask waits for
// the answers of every instance the message reached, or until its ctx ends:
// an instance that does not answer in time is left out of the sum, and the
// Answer says so (Partial). Delivery is at most once, as on the bus.
package tally

import (
	"context"

	"github.com/caddy-realtime/realtime/extensions/envelope"
)

// Handler delivers a message received from another instance to this
// instance's connections and returns how many it reached. It is called from
// one goroutine of the Tally, one message at a time, and must not block.
type Handler func(m envelope.Message) int

// Answer is what the other instances answered to one Ask.
type Answer struct {
	// Delivered is the sum of the counts the answering instances reported.
	Delivered int
	// Answered is how many instances answered in time.
	Answered int
	// Reached is how many other instances received the message: those
	// Answered counts, and those that did not answer in time (they may
	// still have delivered it). -1 when unknown.
	Reached int
}

// Partial reports whether an instance that received the message did not
// answer in time, so that Delivered may fall short of the cluster's count.
func (a Answer) Partial() bool { return a.Reached < 0 || a.Answered < a.Reached }

// Tally delivers a message on the other instances and sums their counts.
// It is safe for concurrent use.
type Tally interface {
	// Ask sends m (a direct send, or a system-topic frame) to every other
	// instance, whose Handlers deliver it, and waits for their counts until
	// every instance m reached answered or ctx ends; then it returns what
	// arrived. The error is the failure to send m (nothing then reached
	// another instance, or it may have if the send timed out); m that
	// breaks the envelope rules is an envelope error.
	Ask(ctx context.Context, m envelope.Message) (Answer, error)
}

// Closer is implemented by a Tally that holds goroutines and connections.
// Close stops them, waiting until ctx ends; the Handler is not called after
// it returns nil. Ask then fails. Close is idempotent.
type Closer interface {
	Close(ctx context.Context) error
}
