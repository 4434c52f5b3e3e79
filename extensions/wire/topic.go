package wire

import "unicode/utf8"

// MaxTopicLen is the longest valid topic, in characters (UTF-16 code units
// when non-ASCII topics are allowed), docs/protocol.md §4.1.
const MaxTopicLen = 256

// MaxEventLen is the longest valid event name in bytes, docs/protocol.md §4.2.
const MaxEventLen = 256

// SystemPrefix starts every topic the gateway reserves for itself (§4.3).
const SystemPrefix = "__"

// Prefixes of the system topics that carry feature frames (§4.3).
const (
	PresencePrefix = "__presence:"
	CursorPrefix   = "__cursor:"
	GroupPrefix    = "__group:"
	ReplayPrefix   = "__replay:"
	HealthTopic    = "__realtime"
)

// ValidTopic reports whether t is a valid wire topic: 1–256 characters of
// printable ASCII without '"' and '\'. With allowNonASCII, any character from
// U+0020 up is allowed except '"' and '\', and length counts UTF-16 code units,
// as a browser's String.length does. A valid topic never needs JSON escaping,
// which is what lets the encoder splice it into frames verbatim.
func ValidTopic(t string, allowNonASCII bool) bool {
	if len(t) == 0 {
		return false
	}
	if !allowNonASCII {
		if len(t) > MaxTopicLen {
			return false
		}
		for i := 0; i < len(t); i++ {
			c := t[i]
			if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
				return false
			}
		}
		return true
	}
	units := 0
	for i, r := range t {
		switch {
		case r == utf8.RuneError && !isEncodedFFFD(t[i:]):
			// Invalid UTF-8 cannot come from a JSON string; refuse it from any other source.
			return false
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '"' || r == '\\':
			// C0 and C1 control characters stay out even with non-ASCII allowed (§9.9).
			return false
		case r >= 0x10000:
			units += 2
		default:
			units++
		}
		if units > MaxTopicLen {
			return false
		}
	}
	return true
}

// IsSystem reports whether t is in the reserved "__" namespace.
func IsSystem(t string) bool {
	return len(t) >= 2 && t[0] == '_' && t[1] == '_'
}

// ValidEvent reports whether e is a valid event name: 1–256 bytes without
// control characters, '"' or '\' (docs/protocol.md §4.2).
func ValidEvent(e string) bool {
	if len(e) == 0 || len(e) > MaxEventLen || !utf8.ValidString(e) {
		return false
	}
	for _, r := range e {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// isEncodedFFFD tells a genuine U+FFFD (three bytes) from a decoding error.
func isEncodedFFFD(s string) bool {
	_, size := utf8.DecodeRuneInString(s)
	return size == 3
}
