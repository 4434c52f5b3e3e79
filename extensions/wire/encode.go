package wire

import "strconv"

// Static frames, shared by every connection.
var (
	HeartbeatFrame = []byte(`{"type":"heartbeat"}`)
	ResumedFrame   = []byte(`{"type":"resumed"}`)
	nullJSON       = []byte("null")
)

// MaxFrame is the hard cap on an outbound frame (PROTOCOL.md §3.1, §8):
// both clients silently drop anything longer.
const MaxFrame = 1 << 20

// MaxBatchFrame caps one batch frame (§7.2); larger sets are split.
const MaxBatchFrame = 256 << 10

// AppendEnvelope appends {"topic":T,"event":E,"data":D} and, when seq > 0,
// ,"seq":N before the closing brace. topic and event must already be valid
// (ValidTopic, ValidEvent): valid names never need escaping, so they are
// spliced verbatim. data must be valid JSON; empty data encodes as null
// (§3.1 rule 4).
func AppendEnvelope(dst []byte, topic, event string, data []byte, seq uint64) []byte {
	if len(data) == 0 {
		data = nullJSON
	}
	dst = append(dst, `{"topic":"`...)
	dst = append(dst, topic...)
	dst = append(dst, `","event":"`...)
	dst = append(dst, event...)
	dst = append(dst, `","data":`...)
	dst = append(dst, data...)
	if seq > 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, seq, 10)
	}
	return append(dst, '}')
}

// EnvelopeSize is the exact length AppendEnvelope produces, so callers can
// reject oversized publishes before encoding and size buffers exactly.
func EnvelopeSize(topic, event string, data []byte, seq uint64) int {
	n := len(`{"topic":"","event":"","data":}`) + len(topic) + len(event)
	if len(data) == 0 {
		n += len(nullJSON)
	} else {
		n += len(data)
	}
	if seq > 0 {
		n += len(`,"seq":`) + digits(seq)
	}
	return n
}

func digits(v uint64) int {
	n := 1
	for v >= 10 {
		v /= 10
		n++
	}
	return n
}

// Welcome encodes the first frame of every connection (§2.3).
func Welcome(sessionID string) []byte {
	b := make([]byte, 0, 33+len(sessionID))
	b = append(b, `{"type":"welcome","sessionId":"`...)
	b = append(b, sessionID...)
	return append(b, `"}`...)
}

// Subscribed encodes a subscribe ack. topic and ref are the raw JSON tokens
// the client sent: acks echo them verbatim, even a non-string topic (§3.4).
func Subscribed(topic, ref []byte) []byte {
	b := make([]byte, 0, 40+len(topic)+len(ref))
	b = append(b, `{"type":"subscribed","topic":`...)
	b = append(b, topic...)
	b = append(b, `,"ref":`...)
	b = append(b, ref...)
	return append(b, '}')
}

// SubscribeDenied encodes a subscribe refusal with its reason, which must be
// printable ASCII without '"' or '\' (the hub only passes canonical codes
// and reasons it validated).
func SubscribeDenied(topic, ref []byte, reason string) []byte {
	b := make([]byte, 0, 64+len(topic)+len(ref)+len(reason))
	b = append(b, `{"type":"subscribe-denied","topic":`...)
	b = append(b, topic...)
	b = append(b, `,"ref":`...)
	b = append(b, ref...)
	b = append(b, `,"reason":"`...)
	b = append(b, reason...)
	return append(b, `"}`...)
}

// Request encodes a server request awaiting the client's reply (§3.4).
func Request(ref uint64, event string, data []byte) []byte {
	if len(data) == 0 {
		data = nullJSON
	}
	b := make([]byte, 0, 48+len(event)+len(data))
	b = append(b, `{"type":"request","ref":`...)
	b = strconv.AppendUint(b, ref, 10)
	b = append(b, `,"event":"`...)
	b = append(b, event...)
	b = append(b, `","data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// Batch frames: BatchOpen, then envelopes separated by ',', then BatchClose.
const (
	BatchOpen  = `{"type":"batch","events":[`
	BatchClose = `]}`
)

// AppendBatch appends one batch frame holding envs in order (§7.2). The
// caller keeps the frame under MaxBatchFrame; a single envelope should be
// sent plain instead.
func AppendBatch(dst []byte, envs [][]byte) []byte {
	dst = append(dst, BatchOpen...)
	for i, e := range envs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, e...)
	}
	return append(dst, BatchClose...)
}

// ValidReason reports whether an application's deny reason may be sent
// verbatim: 1–64 printable ASCII characters (§3.5), without '"' or '\' so it
// needs no escaping.
func ValidReason(r string) bool {
	if len(r) == 0 || len(r) > 64 {
		return false
	}
	for i := 0; i < len(r); i++ {
		c := r[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
