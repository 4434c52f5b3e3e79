package envelope

import (
	"encoding/json"
	"errors"
	"strconv"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Message is one published event crossing the bus.
type Message struct {
	Topic string // wire topic; for a direct send, the topic of the frame
	Event string
	Data  json.RawMessage // raw JSON, passed through unchanged; nil means null
	Seq   uint64          // 0: no seq (unsequenced or system topic)
	User  string          // non-empty: deliver to the connections of this user (direct send) instead of topic subscribers
}

var (
	// ErrInvalidMessage means a message or an envelope broke the envelope
	// rules (see the package comment): a bad topic, event, data, seq or
	// user, or malformed envelope JSON. Nothing of that unit was relayed or
	// delivered.
	ErrInvalidMessage = errors.New("bus: invalid message")

	// ErrTooLarge means an envelope exceeds the configured size cap
	// (Options.MaxBytes): the publisher gets it so that the HTTP API can
	// answer 413, and a receiver refuses such an envelope unparsed.
	ErrTooLarge = errors.New("bus: envelope too large")
)

// Prefix is how every envelope Encode writes for instanceID begins, up to
// and including the ',' after the instanceId member, so a receiver can
// recognise its own envelopes without decoding them.
func Prefix(instanceID string) string {
	return string(append(appendInstance(nil, instanceID), ','))
}

func appendInstance(b []byte, instanceID string) []byte {
	b = append(b, `{"instanceId":`...)
	return wire.AppendString(b, instanceID)
}

// StoreInstanceID is the instanceId of the envelopes a replay store
// publishes when it appends an event (AppendStore): every Redis bus
// delivers them on every instance, the publishing one included, so no bus
// may take it as its own id.
const StoreInstanceID = "replay"

// StoreHead is a store envelope up to its data,
// {"instanceId":"replay","topic":T,"event":E,"data":, for a Redis script
// that appends the data and the seq itself. topic and event must be valid
// on the wire (wire.ValidTopic with non-ASCII allowed, wire.ValidEvent):
// they are spliced unescaped.
func StoreHead(topic, event string) string {
	return string(appendStoreHead(make([]byte, 0, len(storeHead)+len(topic)+len(event)+16), topic, event))
}

const storeHead = `{"instanceId":"` + StoreInstanceID + `","topic":"`

func appendStoreHead(b []byte, topic, event string) []byte {
	b = append(b, storeHead...)
	b = append(b, topic...)
	b = append(b, `","event":"`...)
	b = append(b, event...)
	return append(b, `","data":`...)
}

// AppendStore appends the envelope a replay store publishes for the event
// it stored as seq: {"instanceId":"replay","topic":T,"event":E,"data":D,"seq":N},
// the flat shape Decode accepts from StoreInstanceID. topic and event must
// be valid on the wire, as for StoreHead, and data valid JSON; empty data
// is null.
func AppendStore(dst []byte, topic, event string, data json.RawMessage, seq uint64) []byte {
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	dst = appendStoreHead(dst, topic, event)
	dst = append(dst, data...)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}
