// Package bus carries published messages between gateway instances, so that
// a publish on one instance reaches subscribers connected to any of them.
//
// A Bus relays; it does not deliver locally. The gateway delivers a publish
// to its own subscribers itself and hands the same messages to
// Bus.Publish; every other instance's Handler receives them and delivers
// them to its subscribers. A Bus never echoes a unit back to its publisher,
// so nothing is delivered twice (extensions-study.md §2.1, echo
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
// (PROTOCOL.md §5). Close (the Closer extra) stops the goroutine and waits
// for it, bounded by its ctx.
//
// # Backends
//
//   - Memory: in-process. Alone (the single-instance gateway, the default)
//     Publish does nothing. Several Memory buses on one Network form an
//     in-process cluster, for tests and for Go programs embedding several
//     gateways.
//   - Redis: PUBLISH/SUBSCRIBE on one channel, "uws:pubsub" by
//     default, in the envelope format below, so instances interoperate with
//     Node servers running the reference package,
//     svelte-adapter-uws-extensions.
//
// Every backend runs the conformance suite in bus_test.go.
//
// # Envelope format
//
// On Redis, one published unit is one PUBLISH of one UTF-8 JSON object, the
// envelope. EncodeEnvelope and DecodeEnvelope implement it; three shapes
// exist:
//
//	{"instanceId":"a1b2","topic":"chat","event":"created","data":{"id":1},"seq":7}
//	{"instanceId":"a1b2","batch":[{"topic":"chat","event":"created","data":{"id":1},"seq":7},{"topic":"feed","event":"x","data":null}]}
//	{"instanceId":"a1b2","messages":[{"topic":"dm","event":"new","data":{"m":1},"user":"u9"}]}
//
// The first is one topic message and the second several, in order, as the
// reference package sends them (it never sends "seq": the gateway adds it
// for topics with a replay buffer, so every instance delivers the seq the
// publishing instance stamped, PROTOCOL.md §5.1). The third is used when a
// unit holds a direct send ("user": deliver to that user's connections,
// not to the topic's subscribers). It has no top-level "topic" or "batch",
// so nodes of the reference package cannot take it for a publish; they
// would deliver a direct send found in the other shapes to every subscriber
// of its topic.
//
// Members:
//
//   - instanceId: the publishing instance's id, a string, compared by
//     receivers to drop their own units. Envelopes from outside publishers
//     may omit it.
//   - topic: a valid wire topic (wire.ValidTopic). "__" topics are refused
//     unless EnvelopeOptions.SystemTopics lists them.
//   - event: a valid event name (wire.ValidEvent).
//   - data: any JSON value, copied byte for byte between the publisher and
//     every client; never decoded and re-encoded (re-encoding rounds large
//     numbers and reorders keys, extensions-study.md L-24). Absent means
//     null.
//   - seq: optional integer from 1 to 2^53; never on a "__" topic or a
//     direct send.
//   - user: only in "messages" elements, a non-empty string, the presence
//     key of the addressee.
//
// A receiver refuses a whole envelope if anything is wrong, checking its
// size before parsing (EnvelopeOptions.MaxBytes); unknown members are
// ignored, so a newer sender can add some.
package bus
