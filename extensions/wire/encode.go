package wire

import (
	"strconv"
	"unicode/utf8"
)

// Static frames, shared by every connection.
var (
	HeartbeatFrame = []byte(`{"type":"heartbeat"}`)
	ResumedFrame   = []byte(`{"type":"resumed"}`)
	nullJSON       = []byte("null")
)

// MaxFrame is the hard cap on an outbound frame (docs/protocol.md §3.1, §8):
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

// AppendString appends s as a JSON string, the one string encoder of the
// gateway's frames, envelopes and events. It escapes only what JSON
// requires: '"', '\' and the control characters below U+0020, as \u00XX.
// It does not HTML-escape '<', '>' and '&', nor escape U+2028 and U+2029,
// as JSON.stringify does not: the output is parsed as JSON, never embedded
// in a script. Each byte of invalid UTF-8 becomes \ufffd, as encoding/json
// writes it, so the output is always valid UTF-8 JSON; callers that must
// not alter a string (a user key, an instance id) check it is valid UTF-8
// first.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0 // s[start:i] is pending, to be copied in one append
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		if c == '"' || c == '\\' {
			dst = append(dst, '\\', c)
		} else {
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
