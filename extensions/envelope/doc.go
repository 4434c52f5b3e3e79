// Package envelope is the bus's wire format: how one published unit
// crosses Redis between gateway instances, Node servers running the
// reference package (svelte-adapter-uws-extensions) and the replay stores
// that publish what they append. It is the one place the format is
// written, so the bus and the stores cannot drift apart.
//
// On Redis, one published unit is one PUBLISH of one UTF-8 JSON object, the
// envelope. Encode and Decode implement it; three shapes exist:
//
//	{"instanceId":"a1b2","topic":"chat","event":"created","data":{"id":1},"seq":7}
//	{"instanceId":"a1b2","batch":[{"topic":"chat","event":"created","data":{"id":1},"seq":7},{"topic":"feed","event":"x","data":null}]}
//	{"instanceId":"a1b2","messages":[{"topic":"dm","event":"new","data":{"m":1},"user":"u9"}]}
//
// The first is one topic message and the second several, in order, as the
// reference package sends them (it never sends "seq": the gateway adds it
// for topics with a replay buffer, so every instance delivers the seq the
// publishing instance stamped, docs/protocol.md §5.1). The third is used when a
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
//     unless Options.SystemTopics lists them.
//   - event: a valid event name (wire.ValidEvent).
//   - data: any JSON value, copied byte for byte between the publisher and
//     every client; never decoded and re-encoded (re-encoding rounds large
//     numbers and reorders keys, docs/design.md, lesson L-24). Absent means
//     null.
//   - seq: optional integer from 1 to 2^53; never on a "__" topic or a
//     direct send.
//   - user: only in "messages" elements, a non-empty string, the presence
//     key of the addressee.
//
// A receiver refuses a whole envelope if anything is wrong, checking its
// size before parsing (Options.MaxBytes); unknown members are ignored, so
// a newer sender can add some.
//
// A store envelope (AppendStore, StoreHead) is the flat shape with
// instanceId StoreInstanceID and a seq: a replay store publishes it from
// the append itself, so every instance receives a topic's events in the
// store's order.
package envelope
