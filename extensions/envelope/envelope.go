package envelope

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultMaxBytes is the default Options.MaxBytes: twice the
// largest frame (docs/protocol.md §3.1), so that an envelope carrying one maximal
// frame always fits with its instanceId, while an outside envelope still
// costs at most 2 MiB to refuse. Nodes of the reference package refuse
// envelopes over 1 MiB (their maxEnvelopeBytes); a mixed cluster that
// publishes near that size should set MaxBytes to 1 MiB.
const DefaultMaxBytes = 2 * wire.MaxFrame

// maxSeq is the largest seq an envelope may carry: browsers hold seqs in
// JavaScript numbers, exact only up to 2^53 (wire.NonNegInt refuses more).
const maxSeq = 1 << 53

// Options are the rules an envelope must follow, applied alike when
// encoding and decoding: an instance refuses to send what its peers, which
// share its configuration, would refuse to receive. The zero value is the
// strictest policy with the default size cap.
type Options struct {
	// MaxBytes caps an envelope's encoded size. A longer one is refused
	// with ErrTooLarge before any parsing. Default: DefaultMaxBytes.
	MaxBytes int

	// AllowNonASCIITopics accepts topics with characters from U+0080 up, as
	// the handler's allow_non_ascii_topics does (docs/protocol.md §4.1).
	// Default: false.
	AllowNonASCIITopics bool

	// SystemTopics lists the "__" topics an envelope may carry. Any process
	// with access to the Redis server can publish on the bus channel, so by
	// default every system topic is refused: a forged __presence or
	// __realtime frame would reach clients as if the gateway had sent it
	// (docs/design.md, lesson L-33). Default: none.
	SystemTopics wire.Patterns
}

func (o Options) maxBytes() int {
	if o.MaxBytes <= 0 {
		return DefaultMaxBytes
	}
	return o.MaxBytes
}

// check applies the envelope rules to one message whose strings are known
// to be valid UTF-8 (decoded from valid UTF-8 JSON, or checked by the
// caller). It does not look at Data.
func (o Options) check(m *Message) error {
	if !wire.ValidTopic(m.Topic, o.AllowNonASCIITopics) {
		return fmt.Errorf("%w: topic must be 1-256 printable characters without '\"' or '\\'", ErrInvalidMessage)
	}
	system := wire.IsSystem(m.Topic)
	if system && o.SystemTopics.Match(m.Topic) < 0 {
		return fmt.Errorf("%w: system topic not allowed on the bus", ErrInvalidMessage)
	}
	if !wire.ValidEvent(m.Event) {
		return fmt.Errorf("%w: event must be 1-256 bytes without control characters, '\"' or '\\'", ErrInvalidMessage)
	}
	if m.Seq > 0 {
		// docs/protocol.md §4.3 and §5.1 rule 5: system-topic frames and direct
		// sends never carry seq.
		switch {
		case system:
			return fmt.Errorf("%w: seq on a system topic", ErrInvalidMessage)
		case m.User != "":
			return fmt.Errorf("%w: seq on a direct send", ErrInvalidMessage)
		case m.Seq > maxSeq:
			return fmt.Errorf("%w: seq beyond 2^53", ErrInvalidMessage)
		}
	}
	return nil
}

// Check applies the rules to a message from Go code, whose strings and data
// have not been checked yet, as Encode does to each message: an in-process
// bus (bus.Memory) refuses what a Redis bus would.
func (o Options) Check(m *Message) error {
	if !utf8.ValidString(m.User) {
		return fmt.Errorf("%w: user is not valid UTF-8", ErrInvalidMessage)
	}
	if err := o.check(m); err != nil {
		return err
	}
	// json.Valid accepts invalid UTF-8 inside strings, which would make the
	// WebSocket text frame invalid and the browser fail the connection.
	if len(m.Data) > 0 && (!json.Valid(m.Data) || !utf8.Valid(m.Data)) {
		return fmt.Errorf("%w: data is not valid UTF-8 JSON", ErrInvalidMessage)
	}
	return nil
}

// Encode encodes msgs as one bus envelope from instanceID (see the
// package comment for the format): the flat shape for one topic message,
// "batch" for several, and "messages" when any is a direct send. Data is
// spliced in byte for byte. It returns ErrInvalidMessage when instanceID is
// empty, msgs is empty, or a message breaks opts' rules, and ErrTooLarge when
// the envelope would exceed opts.MaxBytes.
func Encode(instanceID string, msgs []Message, opts Options) ([]byte, error) {
	if instanceID == "" || !utf8.ValidString(instanceID) {
		return nil, fmt.Errorf("%w: instance id must be a non-empty UTF-8 string", ErrInvalidMessage)
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: an envelope carries at least one message", ErrInvalidMessage)
	}
	size := len(`{"instanceId":,"batch":[]}`) + len(instanceID) + 2
	direct := false
	for i := range msgs {
		m := &msgs[i]
		if err := opts.Check(m); err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		direct = direct || m.User != ""
		size += wire.EnvelopeSize(m.Topic, m.Event, m.Data, m.Seq) + len(`,"user":""`) + len(m.User) + 1
	}
	// size is an upper bound but for escapes in users and the instance id;
	// the exact check comes after encoding.
	b := make([]byte, 0, min(size, opts.maxBytes()+1))
	b = appendInstance(b, instanceID)
	switch {
	case direct:
		b = append(b, `,"messages":[`...)
		b = appendMessages(b, msgs)
		b = append(b, "]}"...)
	case len(msgs) == 1:
		b = append(b, ',')
		b = appendFields(b, &msgs[0])
		b = append(b, '}')
	default:
		b = append(b, `,"batch":[`...)
		b = appendMessages(b, msgs)
		b = append(b, "]}"...)
	}
	if len(b) > opts.maxBytes() {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(b), opts.maxBytes())
	}
	return b, nil
}

func appendMessages(b []byte, msgs []Message) []byte {
	for i := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		b = appendFields(b, &msgs[i])
		b = append(b, '}')
	}
	return b
}

// appendFields appends "topic":…,"event":…,"data":…[,"seq":N][,"user":…].
// Valid topics and events never need escaping (wire.ValidTopic), so they are
// spliced verbatim, as wire.AppendEnvelope does.
func appendFields(b []byte, m *Message) []byte {
	b = append(b, `"topic":"`...)
	b = append(b, m.Topic...)
	b = append(b, `","event":"`...)
	b = append(b, m.Event...)
	b = append(b, `","data":`...)
	if len(m.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, m.Data...)
	}
	if m.Seq > 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, m.Seq, 10)
	}
	if m.User != "" {
		b = append(b, `,"user":`...)
		b = wire.AppendString(b, m.User)
	}
	return b
}

// Decode parses and validates an envelope received from the bus
// channel, which any process with access to Redis can publish on, so
// everything is checked: the size cap before parsing (ErrTooLarge), then
// valid UTF-8 JSON in one of the three shapes, and every message against
// opts (ErrInvalidMessage). Unknown members are ignored; a repeated member
// counts once, the last one winning, as in JavaScript's JSON.parse.
//
// instanceID is "" when the envelope has none (an outside publisher).
// Each message's Data is the raw "data" token, a subslice of b (nil when
// absent): the caller must not modify b afterwards. An invalid envelope is
// refused whole; Decode never panics.
func Decode(b []byte, opts Options) (instanceID string, msgs []Message, err error) {
	if len(b) > opts.maxBytes() {
		return "", nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(b), opts.maxBytes())
	}
	// json.Valid accepts invalid UTF-8 in strings; checking the whole input
	// once also covers every topic, event, user and data inside it.
	obj := b[wire.SkipSpace(b, 0):]
	if len(obj) == 0 || obj[0] != '{' || !utf8.Valid(b) || !json.Valid(b) {
		return "", nil, fmt.Errorf("%w: envelope is not a UTF-8 JSON object", ErrInvalidMessage)
	}

	var (
		top                   fields
		id, batch, list       []byte
		hasID, hasBatch, hasL bool
	)
	wire.EachMember(obj, func(k, v []byte) {
		switch string(wire.KeyName(k)) {
		case "instanceId":
			id, hasID = v, true
		case "batch":
			batch, hasBatch = v, true
		case "messages":
			list, hasL = v, true
		default:
			top.set(k, v)
		}
	})
	if hasID {
		var ok bool
		if instanceID, ok = wire.StringToken(id); !ok {
			return "", nil, fmt.Errorf("%w: instanceId must be a string", ErrInvalidMessage)
		}
	}

	switch {
	case hasBatch && hasL:
		return "", nil, fmt.Errorf(`%w: "batch" and "messages" in one envelope`, ErrInvalidMessage)
	case (hasBatch || hasL) && top.any():
		return "", nil, fmt.Errorf("%w: message members beside a message list", ErrInvalidMessage)
	case hasBatch:
		msgs, err = decodeList(batch, false, opts)
	case hasL:
		msgs, err = decodeList(list, true, opts)
	default:
		var m Message
		m, err = top.message(false, opts)
		msgs = []Message{m}
	}
	if err != nil {
		return "", nil, err
	}
	return instanceID, msgs, nil
}

func decodeList(arr []byte, direct bool, opts Options) ([]Message, error) {
	if arr[0] != '[' {
		return nil, fmt.Errorf("%w: message list must be an array", ErrInvalidMessage)
	}
	n := 0
	bad := false
	wire.EachElement(arr, func(v []byte) bool {
		n++
		bad = v[0] != '{'
		return !bad
	})
	switch {
	case bad:
		return nil, fmt.Errorf("%w: message %d is not an object", ErrInvalidMessage, n-1)
	case n == 0:
		return nil, fmt.Errorf("%w: empty message list", ErrInvalidMessage)
	}
	msgs := make([]Message, 0, n)
	var err error
	wire.EachElement(arr, func(v []byte) bool {
		var f fields
		wire.EachMember(v, f.set)
		var m Message
		if m, err = f.message(direct, opts); err != nil {
			err = fmt.Errorf("message %d: %w", len(msgs), err)
			return false
		}
		msgs = append(msgs, m)
		return true
	})
	return msgs, err
}

// fields holds the raw members of one message.
type fields struct {
	topic, event, data, seq, user []byte
	hasData, hasSeq, hasUser      bool
}

func (f *fields) set(k, v []byte) {
	switch string(wire.KeyName(k)) {
	case "topic":
		f.topic = v
	case "event":
		f.event = v
	case "data":
		f.data, f.hasData = v, true
	case "seq":
		f.seq, f.hasSeq = v, true
	case "user":
		f.user, f.hasUser = v, true
	}
}

func (f *fields) any() bool {
	return f.topic != nil || f.event != nil || f.hasData || f.hasSeq || f.hasUser
}

// message validates the fields as one message. user is allowed only in the
// "messages" shape: the reference package's nodes would deliver a direct
// send found in the other shapes to every subscriber of its topic.
func (f *fields) message(userAllowed bool, opts Options) (Message, error) {
	var m Message
	var ok bool
	if m.Topic, ok = wire.StringToken(f.topic); !ok {
		return m, fmt.Errorf("%w: topic must be a string", ErrInvalidMessage)
	}
	if m.Event, ok = wire.StringToken(f.event); !ok {
		return m, fmt.Errorf("%w: event must be a string", ErrInvalidMessage)
	}
	if f.hasSeq {
		if m.Seq, ok = wire.NonNegInt(f.seq); !ok || m.Seq == 0 {
			return m, fmt.Errorf("%w: seq must be an integer from 1 to 2^53", ErrInvalidMessage)
		}
	}
	if f.hasUser {
		if !userAllowed {
			return m, fmt.Errorf(`%w: user outside a "messages" list`, ErrInvalidMessage)
		}
		if m.User, ok = wire.StringToken(f.user); !ok || m.User == "" {
			return m, fmt.Errorf("%w: user must be a non-empty string", ErrInvalidMessage)
		}
	}
	if f.hasData {
		m.Data = f.data
	}
	if err := opts.check(&m); err != nil {
		return m, err
	}
	return m, nil
}
