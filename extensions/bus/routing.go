package bus

import (
	"hash/fnv"
	"strconv"
	"time"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultLinger is the default Routing.Linger.
const DefaultLinger = 1500 * time.Millisecond

// Routing makes a Redis bus publish each topic's units on a channel of that
// topic (or of its partition) and subscribe only to the channels of the
// topics this instance serves, which it asks for with Router.Hold. An
// instance then receives none of the units of a topic nobody on it
// subscribes to, and Redis's output per publish grows with the instances
// that serve the topic, not with the size of the cluster.
//
// Channel names, all starting with Prefix:
//
//	<prefix>rt:bus:{<topic>}          a topic's channel (Partitions == 0)
//	<prefix>rt:bus:p:<n>              partition n of Partitions (a hash of the topic mod Partitions)
//	<prefix>rt:bus:direct             direct sends, which every instance subscribes to
//	<prefix>rt:bus:probe:<instanceId> the instance's health probe
//
// A topic's channel carries the same {<topic>} hash tag as its replay keys
// (rt:replay:{<topic>}:seq), so on a Redis Cluster they share a slot; a
// topic channel always holds '{' and the other names never do, so they
// cannot collide.
type Routing struct {
	// Prefix starts every channel name; a gateway passes its Redis key
	// prefix, so that gateways (or tests) sharing a server stay apart. It
	// must not contain '{' or '}'. Default: "".
	Prefix string

	// Partitions, when positive, hashes topics onto that many channels
	// instead of one channel per topic: the subscription count of an
	// instance stays bounded however many topics it serves, at the cost of
	// receiving the units of the other topics of its partitions (which it
	// drops). Default: 0, one channel per topic.
	Partitions int

	// Linger is how long a channel stays subscribed after its last holder
	// released it, so that a client that resubscribes at once (a page
	// reload) costs no UNSUBSCRIBE and SUBSCRIBE. Default: DefaultLinger.
	Linger time.Duration
}

// TopicChannel returns the channel a unit of topic travels on. System
// topics the gateway relays (cursor and group frames) have channels of
// their own like any topic.
func (r Routing) TopicChannel(topic string) string {
	if r.Partitions > 0 {
		return r.Prefix + "rt:bus:p:" + strconv.FormatUint(uint64(partition(topic)%uint32(r.Partitions)), 10)
	}
	return r.Prefix + "rt:bus:{" + topic + "}"
}

// partition hashes a topic: FNV-1a, whose low bits vary little between
// names that differ in their last characters (topic-1, topic-2), then
// MurmurHash3's finalizer to spread them. Every instance must compute the
// same value, so no seeded hash.
func partition(topic string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	x := h.Sum32()
	x ^= x >> 16
	x *= 0x85ebca6b
	x ^= x >> 13
	x *= 0xc2b2ae35
	x ^= x >> 16
	return x
}

// DirectChannel returns the channel of direct sends (Message.User on a
// non-system topic). Every instance subscribes to it: a user's connections
// may be on any instance, and direct sends are rare next to topic
// publishes, so a lookup of where each user is connected would cost more
// than the copies it saves.
func (r Routing) DirectChannel() string { return r.Prefix + "rt:bus:direct" }

func (r Routing) probeChannel(id string) string { return r.Prefix + "rt:bus:probe:" + id }

// channelOf returns the channel of one message.
func (r Routing) channelOf(m *Message) string {
	if m.User != "" && !wire.IsSystem(m.Topic) {
		return r.DirectChannel()
	}
	return r.TopicChannel(m.Topic)
}

// Router is implemented by a Bus that relays a topic's units only to the
// instances that hold the topic (Routing). Hold and Release count: a
// topic is subscribed while it has a holder, and for a linger after the
// last one released it.
//
// A unit whose messages travel on several channels (a batch over topics of
// different channels, a direct send beside a topic message) is split into
// one unit per channel, each in its messages' order: an instance holding
// several of those topics receives several Handler calls. One publisher's
// units still arrive in publish order.
type Router interface {
	// Hold asks for topic's units. The returned channel is closed once
	// Redis confirmed the subscription (at once when it already had): a
	// unit published after that reaches this instance. It never blocks.
	Hold(topic string) <-chan struct{}
	// Release undoes one Hold.
	Release(topic string)
}
