// Package bus carries published messages between gateway instances, so that
// a publish on one instance reaches subscribers connected to any of them.
//
// A Bus relays; it does not deliver locally. The gateway delivers a publish
// to its own subscribers itself and hands the same messages to
// Bus.Publish; every other instance's Handler receives them and delivers
// them to its subscribers. A Bus never echoes a unit back to its publisher,
// so nothing is delivered twice (docs/design.md, lessons: echo
// suppression).
//
// # Concurrency contract
//
// Publish is safe for concurrent use and never waits for another instance's
// Handler. Units from one publisher arrive in publish order: when one
// Publish returns before the next starts, every other instance receives the
// first unit first. A batch publish is one unit: it arrives in one Handler
// call, whole or not at all. Each Bus calls its Handler from one goroutine
// of its own, one call at a time; the Handler must not block, since it holds
// up every later unit. Delivery is at most once: units published while an
// instance is unreachable are lost, and replay stores are the recovery path
// (docs/protocol.md §5). Close (the Closer extra) stops the goroutine and waits
// for it, bounded by its ctx.
//
// # Backends
//
//   - Memory: in-process. Alone (the single-instance gateway, the default)
//     Publish does nothing. Several Memory buses on one Network form an
//     in-process cluster, for tests and for Go programs embedding several
//     gateways.
//   - Redis: PUBLISH/SUBSCRIBE on one channel, "uws:pubsub" by default, in
//     the envelope format (package envelope), so instances interoperate
//     with Node servers running the reference package,
//     svelte-adapter-uws-extensions.
//
// Every backend runs the conformance suite in bus_test.go.
//
// # Envelope format
//
// On Redis, one published unit is one PUBLISH of one envelope, which
// package envelope encodes and decodes; its package comment describes the
// format, shared with the reference package's nodes and with the replay
// stores that publish on the bus themselves.
package bus
