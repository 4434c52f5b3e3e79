package bus

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultMaxEnvelope is the default EnvelopeOptions.MaxBytes: twice the
// largest frame (PROTOCOL.md §3.1), so that an envelope carrying one maximal
// frame always fits with its instanceId, while an outside envelope still
// costs at most 2 MiB to refuse. Nodes of the reference package refuse
// envelopes over 1 MiB (their maxEnvelopeBytes); a mixed cluster that
// publishes near that size should set MaxBytes to 1 MiB.
const DefaultMaxEnvelope = 2 * wire.MaxFrame

// maxSeq is the largest seq an envelope may carry: browsers hold seqs in
// JavaScript numbers, exact only up to 2^53 (wire.NonNegInt refuses more).
const maxSeq = 1 << 53

// EnvelopeOptions are the rules an envelope must follow, applied alike when
// encoding and decoding: an instance refuses to send what its peers, which
// share its configuration, would refuse to receive. The zero value is the
// strictest policy with the default size cap.
type EnvelopeOptions struct {
	// MaxBytes caps an envelope's encoded size. A longer one is refused
	// with ErrTooLarge before any parsing. Default: DefaultMaxEnvelope.
	MaxBytes int

	// AllowNonASCIITopics accepts topics with characters from U+0080 up, as
	// the handler's allow_non_ascii_topics does (PROTOCOL.md §4.1).
	// Default: false.
	AllowNonASCIITopics bool

	// SystemTopics lists the "__" topics an envelope may carry. Any process
	// with access to the Redis server can publish on the bus channel, so by
	// default every system topic is refused: a forged __presence or
	// __realtime frame would reach clients as if the gateway had sent it
	// (extensions-study.md L-33). Default: none.
	SystemTopics wire.Patterns
}

func (o EnvelopeOptions) maxBytes() int {
	if o.MaxBytes <= 0 {
		return DefaultMaxEnvelope
	}
	return o.MaxBytes
}

// check applies the envelope rules to one message whose strings are known
// to be valid UTF-8 (decoded from valid UTF-8 JSON, or checked by the
// caller). It does not look at Data.
func (o EnvelopeOptions) check(m *Message) error {
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
		// PROTOCOL.md §4.3 and §5.1 rule 5: system-topic frames and direct
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

// checkOutgoing applies the rules to a message from Go code, whose strings
// and data have not been checked yet.
func (o EnvelopeOptions) checkOutgoing(m *Message) error {
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

// EncodeEnvelope encodes msgs as one bus envelope from instanceID (see the
// package comment for the format): the flat shape for one topic message,
// "batch" for several, and "messages" when any is a direct send. Data is
// spliced in byte for byte. It returns ErrInvalidMessage when instanceID is
// empty, msgs is empty, or a message breaks opts' rules, and ErrTooLarge when
// the envelope would exceed opts.MaxBytes.
func EncodeEnvelope(instanceID string, msgs []Message, opts EnvelopeOptions) ([]byte, error) {
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
		if err := opts.checkOutgoing(m); err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		direct = direct || m.User != ""
		size += wire.EnvelopeSize(m.Topic, m.Event, m.Data, m.Seq) + len(`,"user":""`) + len(m.User) + 1
	}
	// size is an upper bound but for escapes in users and the instance id;
	// the exact check comes after encoding.
	b := make([]byte, 0, min(size, opts.maxBytes()+1))
	b = append(b, `{"instanceId":`...)
	b = appendString(b, instanceID)
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
		b = appendString(b, m.User)
	}
	return b
}

// appendString appends s (valid UTF-8) as a JSON string, escaping only what
// JSON requires: encoding/json would also HTML-escape and silently replace
// invalid bytes, changing a user key.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// DecodeEnvelope parses and validates an envelope received from the bus
// channel, which any process with access to Redis can publish on, so
// everything is checked: the size cap before parsing (ErrTooLarge), then
// valid UTF-8 JSON in one of the three shapes, and every message against
// opts (ErrInvalidMessage). Unknown members are ignored; a repeated member
// counts once, the last one winning, as in JavaScript's JSON.parse.
//
// instanceID is "" when the envelope has none (an outside publisher).
// Each message's Data is the raw "data" token, a subslice of b (nil when
// absent): the caller must not modify b afterwards. An invalid envelope is
// refused whole; DecodeEnvelope never panics.
func DecodeEnvelope(b []byte, opts EnvelopeOptions) (instanceID string, msgs []Message, err error) {
	if len(b) > opts.maxBytes() {
		return "", nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(b), opts.maxBytes())
	}
	// json.Valid accepts invalid UTF-8 in strings; checking the whole input
	// once also covers every topic, event, user and data inside it.
	obj := trimSpace(b)
	if len(obj) == 0 || obj[0] != '{' || !utf8.Valid(b) || !json.Valid(b) {
		return "", nil, fmt.Errorf("%w: envelope is not a UTF-8 JSON object", ErrInvalidMessage)
	}

	var (
		top                   fields
		id, batch, list       []byte
		hasID, hasBatch, hasL bool
	)
	eachMember(obj, func(k, v []byte) {
		switch string(keyName(k)) {
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
		if instanceID, ok = stringValue(id); !ok {
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

func decodeList(arr []byte, direct bool, opts EnvelopeOptions) ([]Message, error) {
	if arr[0] != '[' {
		return nil, fmt.Errorf("%w: message list must be an array", ErrInvalidMessage)
	}
	n := 0
	bad := false
	eachElement(arr, func(v []byte) bool {
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
	eachElement(arr, func(v []byte) bool {
		var f fields
		eachMember(v, f.set)
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
	switch string(keyName(k)) {
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
func (f *fields) message(userAllowed bool, opts EnvelopeOptions) (Message, error) {
	var m Message
	var ok bool
	if m.Topic, ok = stringValue(f.topic); !ok {
		return m, fmt.Errorf("%w: topic must be a string", ErrInvalidMessage)
	}
	if m.Event, ok = stringValue(f.event); !ok {
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
		if m.User, ok = stringValue(f.user); !ok || m.User == "" {
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

// The scanner below walks JSON that json.Valid has already accepted, so it
// only finds token boundaries and never reports syntax errors. It exists
// because encoding/json matches struct fields case-insensitively ("TOPIC"
// would count as "topic") and cannot hand back the data token unchanged
// without a copy; JSON.parse on the reference package's nodes does neither.
// extensions/wire has the same scanner, unexported.

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return i
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipValue(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// eachMember calls fn with the raw key token (quotes included) and the raw
// value token of each member of the object b (valid JSON, b[0] == '{').
func eachMember(b []byte, fn func(k, v []byte)) {
	i := skipSpace(b, 1)
	for i < len(b) && b[i] != '}' {
		ks := i
		i = skipValue(b, i)
		k := b[ks:i]
		i = skipSpace(b, i)
		i = skipSpace(b, i+1) // ':'
		vs := i
		i = skipValue(b, i)
		fn(k, b[vs:i])
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

// eachElement calls fn with each element of the array b (valid JSON,
// b[0] == '['); fn returns false to stop.
func eachElement(b []byte, fn func(v []byte) bool) {
	i := skipSpace(b, 1)
	for i < len(b) && b[i] != ']' {
		vs := i
		i = skipValue(b, i)
		if !fn(b[vs:i]) {
			return
		}
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

// stringValue decodes a raw JSON string token; ok is false for any other
// kind of value, or none.
func stringValue(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if json.Unmarshal(raw, &s) != nil {
				return "", false
			}
			return s, true
		}
	}
	return string(inner), true
}

// keyName returns the name of a raw key token: its inner bytes, decoded
// only when it holds escapes. Callers switch on string(keyName(k)), which
// the compiler does without allocating.
func keyName(k []byte) []byte {
	inner := k[1 : len(k)-1]
	for _, c := range inner {
		if c == '\\' {
			s, _ := stringValue(k)
			return []byte(s)
		}
	}
	return inner
}
