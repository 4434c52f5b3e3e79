package wire

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"
)

// Kind classifies a client frame (docs/protocol.md §3.2, §3.3).
type Kind uint8

// The kinds of client frame. KindApp is an application message: forwarded
// to the message hook, never interpreted.
const (
	KindApp Kind = iota
	KindHello
	KindSubscribe
	KindSubscribeBatch
	KindUnsubscribe
	KindResume
	KindReplay
	KindCursor
	KindCursorSnapshot
	KindReply
)

var kindNames = [...]string{"app", "hello", "subscribe", "subscribe-batch", "unsubscribe", "resume", "replay", "cursor", "cursor-snapshot", "reply"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Size thresholds of §3.2: control frames are parsed only below these.
const (
	MaxControlFrame = 8192
	MaxResumeFrame  = 65536
)

var resumePrefix = []byte(`{"type":"resume",`)

// Frame is a parsed client control frame. Raw fields alias the input buffer:
// copy what must outlive it.
type Frame struct {
	Kind Kind

	// Topic is the decoded topic of subscribe, unsubscribe, replay, cursor
	// and cursor-snapshot frames; TopicRaw is its JSON token, echoed in acks.
	Topic    string
	TopicRaw []byte

	// Topics holds the raw JSON tokens of a subscribe-batch "topics" array,
	// at most MaxBatchTopics of them; entries may be any JSON value.
	Topics [][]byte

	// Ref is the raw "ref" token when it is a number or string, else nil
	// (no ack is sent without a usable ref, §3.3).
	Ref []byte

	// Caps lists the string entries of hello's "caps".
	Caps []string

	SessionID    string
	LastSeenSeqs []byte // raw non-null object

	// Since is replay's "since" as sent (raw); ReqID the raw "reqId" when a
	// number or string.
	Since []byte
	ReqID []byte

	// Data is a cursor's payload ("data", else "position", else null) or a
	// reply's "data"; Error a reply's raw "error".
	Data  []byte
	Error []byte
}

// MaxBatchTopics is how many subscribe-batch entries are processed (§3.5).
const MaxBatchTopics = 256

// Parse classifies a text frame per §3.2 and fills f. It returns false for
// an application message (f is then meaningless). It never panics on any
// input and allocates only for decoded strings and the topics slice.
func Parse(msg []byte, f *Frame) bool {
	*f = Frame{Topics: f.Topics[:0], Caps: f.Caps[:0]}
	if len(msg) >= MaxControlFrame && !(len(msg) < MaxResumeFrame && bytes.HasPrefix(msg, resumePrefix)) {
		return false
	}
	start := skipSpace(msg, 0)
	// Invalid UTF-8 is an application message: a control frame's tokens
	// are echoed in acks, and the gateway sends only valid text (§1.1).
	if start >= len(msg) || msg[start] != '{' || !utf8.Valid(msg) || !json.Valid(msg) {
		return false
	}
	obj := bytes.TrimRight(msg[start:], " \t\r\n")

	var typ, topic, topics, ref, caps, sid, lss, since, reqID, data, position, errv []byte
	hasData, hasPosition := false, false
	eachMember(obj, func(k, v []byte) {
		switch {
		case keyIs(k, "type"):
			typ = v
		case keyIs(k, "topic"):
			topic = v
		case keyIs(k, "topics"):
			topics = v
		case keyIs(k, "ref"):
			ref = v
		case keyIs(k, "caps"):
			caps = v
		case keyIs(k, "sessionId"):
			sid = v
		case keyIs(k, "lastSeenSeqs"):
			lss = v
		case keyIs(k, "since"):
			since = v
		case keyIs(k, "reqId"):
			reqID = v
		case keyIs(k, "data"):
			data, hasData = v, true
		case keyIs(k, "position"):
			position, hasPosition = v, true
		case keyIs(k, "error"):
			errv = v
		}
	})
	t, ok := stringValue(typ)
	if !ok || (len(msg) >= MaxControlFrame && t != "resume") {
		// Only resume enjoys the larger size (§3.2 rule 2, §7.3).
		return false
	}
	if ref != nil && (isNumber(ref) || ref[0] == '"') {
		f.Ref = ref
	}
	needTopic := func() bool {
		s, ok := stringValue(topic)
		f.Topic, f.TopicRaw = s, topic
		return ok
	}
	switch t {
	case "hello":
		if len(caps) == 0 || caps[0] != '[' {
			return false
		}
		f.Kind = KindHello
		eachElement(caps, func(v []byte) bool {
			if s, ok := stringValue(v); ok {
				f.Caps = append(f.Caps, s)
			}
			return true
		})
	case "subscribe":
		f.Kind = KindSubscribe
		return needTopic()
	case "subscribe-batch":
		if len(topics) == 0 || topics[0] != '[' {
			return false
		}
		f.Kind = KindSubscribeBatch
		eachElement(topics, func(v []byte) bool {
			f.Topics = append(f.Topics, v)
			return len(f.Topics) < MaxBatchTopics
		})
	case "unsubscribe":
		f.Kind = KindUnsubscribe
		return needTopic()
	case "resume":
		s, ok := stringValue(sid)
		if !ok || len(lss) == 0 || lss[0] != '{' {
			return false
		}
		f.Kind, f.SessionID, f.LastSeenSeqs = KindResume, s, lss
	case "replay":
		f.Kind = KindReplay
		f.Since = since
		if reqID != nil && (isNumber(reqID) || reqID[0] == '"') {
			f.ReqID = reqID
		}
		return needTopic()
	case "cursor":
		f.Kind = KindCursor
		switch {
		case hasData:
			f.Data = data
		case hasPosition:
			f.Data = position
		}
		return needTopic()
	case "cursor-snapshot":
		f.Kind = KindCursorSnapshot
		return needTopic()
	case "reply":
		if f.Ref == nil {
			return false
		}
		f.Kind = KindReply
		if hasData {
			f.Data = data
		}
		f.Error = errv
	default:
		return false
	}
	return true
}

// EachLastSeen calls fn for up to limit entries of a resume's lastSeenSeqs
// object whose value is an integer ≥ 0 (§5.3 step 1). Keys are decoded.
func EachLastSeen(raw []byte, limit int, fn func(topic string, seq uint64)) {
	n := 0
	eachMember(raw, func(k, v []byte) {
		if n >= limit {
			return
		}
		n++
		seq, ok := NonNegInt(v)
		if !ok {
			return
		}
		if t, ok := stringValue(k); ok {
			fn(t, seq)
		}
	})
}

// NonNegInt interprets a raw JSON token as JavaScript would test
// Number.isInteger(v) && v >= 0: 5, 5.0 and 5e0 are integers; "5", -1 and
// 1.5 are not. Values beyond 2^53 are refused (not exact in JavaScript).
func NonNegInt(raw []byte) (uint64, bool) {
	if !isNumber(raw) {
		return 0, false
	}
	if u, err := strconv.ParseUint(string(raw), 10, 64); err == nil {
		return u, u <= 1<<53
	}
	fl, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || fl < 0 || fl != math.Trunc(fl) || fl > 1<<53 {
		return 0, false
	}
	return uint64(fl), true
}
