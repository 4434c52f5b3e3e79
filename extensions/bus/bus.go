package bus

import (
	"context"
	"errors"

	"github.com/caddy-realtime/realtime/extensions/envelope"
)

// Message is one published event crossing the bus.
type Message = envelope.Message

// EnvelopeOptions are the envelope rules a bus applies alike to what it
// publishes and what it receives (envelope.Options).
type EnvelopeOptions = envelope.Options

// DefaultMaxEnvelope is the default EnvelopeOptions.MaxBytes.
const DefaultMaxEnvelope = envelope.DefaultMaxBytes

// Handler receives messages published by other instances, in their publish order. It must not block.
//
// A Bus calls its Handler from one goroutine of its own, one call at a time,
// so a slow Handler delays every later message and a blocked one stops the
// bus. msgs is one published unit: a batch publish arrives as one call. The
// Handler must not modify msgs or their Data (other instances in the same
// process may share them) but may keep them.
type Handler func(msgs []Message)

// Bus relays messages to every other instance. Local delivery is the caller's job; a Bus never echoes a message back to the instance that published it.
//
// Delivery is at most once: a message is lost when an instance is
// unreachable, and nothing replays it (replay stores do that, docs/protocol.md §5).
// A Bus is safe for concurrent use.
type Bus interface {
	// Publish relays msgs, in order, as one unit (a batch publish stays one envelope).
	// Every other instance's Handler receives the unit in one call.
	//
	// Order: when one Publish returns before another starts on the same Bus,
	// every other instance receives the first unit first. Concurrent calls
	// are relayed in some order.
	//
	// Publish hands msgs over and returns; it never waits for another
	// instance's Handler, and it does not retain msgs after it returns.
	// Publishing no messages does nothing. Errors: ErrInvalidMessage or
	// ErrTooLarge when a message breaks the envelope rules (nothing of the
	// unit is relayed), ErrClosed after Close, ctx's error when ctx ends
	// first, or a backend error (the unit may then be lost; local
	// subscribers are unaffected since local delivery is the caller's).
	Publish(ctx context.Context, msgs []Message) error
}

// Closer is implemented by a Bus that holds resources: goroutines, network
// connections, a place in a Network. Close stops delivery to the Handler,
// waits for the Bus's goroutines until ctx ends, and releases everything.
// After Close returns, the Handler is not called again (unless Close returned
// ctx's error because the Handler was still running) and Publish returns
// ErrClosed. Close is idempotent.
type Closer interface {
	Close(ctx context.Context) error
}

// Healther is implemented by a Bus that can lose its connection to other
// instances. Healthy reports whether published units currently reach them;
// the gateway tells clients degraded/recovered on changes (docs/protocol.md §4.3).
// It never blocks.
type Healther interface {
	Healthy() bool
}

// DropCounter is implemented by a Bus that drops units it cannot deliver
// in time (a full queue): Dropped counts them since the Bus was built, for
// /health and metrics. It never blocks.
type DropCounter interface {
	Dropped() uint64
}

// InvalidCounter is implemented by a Bus that receives envelopes from
// outside the process: Invalid counts those it refused (the envelope
// rules), since the Bus was built. It never blocks.
type InvalidCounter interface {
	Invalid() uint64
}

var (
	// ErrClosed means Publish was called after Close.
	ErrClosed = errors.New("bus: closed")

	// ErrInvalidMessage means a message or an envelope broke the envelope
	// rules (package envelope): a bad topic, event, data, seq or user, or
	// malformed envelope JSON. Nothing of that unit was relayed or
	// delivered.
	ErrInvalidMessage = envelope.ErrInvalidMessage

	// ErrTooLarge means an envelope exceeds the configured size cap
	// (EnvelopeOptions.MaxBytes): the publisher gets it so that the HTTP
	// API can answer 413, and a receiver refuses such an envelope unparsed.
	ErrTooLarge = envelope.ErrTooLarge
)
