package wire

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// The scanner below walks JSON that json.Valid has already accepted, so it
// only has to find token boundaries, never report syntax errors. It exists
// because encoding/json matches struct fields case-insensitively ("TYPE"
// would count as "type") and allocates a map for unknown shapes; the
// browser clients' JSON.parse does neither.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		// The closing quote is the first one after an even run of
		// backslashes; IndexByte finds quote candidates many bytes at a time.
		start := i + 1
		for i = start; ; i++ {
			q := bytes.IndexByte(b[i:], '"')
			if q < 0 {
				return len(b)
			}
			i += q
			n := 0
			for k := i - 1; k >= start && b[k] == '\\'; k-- {
				n++
			}
			if n%2 == 0 {
				return i + 1
			}
		}
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

// eachMember calls fn for each member of the object b (valid JSON with b[0]
// == '{'), with the raw key token (quotes included) and the raw value token.
func eachMember(b []byte, fn func(key, val []byte)) {
	i := skipSpace(b, 1)
	for i < len(b) && b[i] != '}' {
		ks := i
		i = skipValue(b, i)
		key := b[ks:i]
		i = skipSpace(b, i)
		i = skipSpace(b, i+1) // ':'
		vs := i
		i = skipValue(b, i)
		fn(key, b[vs:i])
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

// eachElement calls fn for each element of the array b (valid JSON, b[0] ==
// '['); fn returns false to stop.
func eachElement(b []byte, fn func(val []byte) bool) {
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

// stringValue decodes a raw JSON string token; ok is false for any other kind.
func stringValue(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	slow := false
	for _, c := range inner {
		if c == '\\' || c >= utf8.RuneSelf {
			slow = true
			break
		}
	}
	if slow && (bytes.IndexByte(inner, '\\') >= 0 || !utf8.Valid(inner)) {
		// Escapes, or invalid UTF-8 that JSON.parse would see as U+FFFD:
		// let encoding/json decode it the same way.
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	return string(inner), true
}

// keyIs reports whether the raw key token names want. Keys without escapes
// compare in place; escaped keys are decoded first, as JSON.parse would.
func keyIs(key []byte, want string) bool {
	if len(key) == len(want)+2 && string(key[1:len(key)-1]) == want {
		return true
	}
	return bytes.IndexByte(key, '\\') >= 0 && string(KeyName(key)) == want
}

// KeyName returns the name a raw key token (quotes included) stands for, as
// JSON.parse reads it: its inner bytes, decoded only when it holds escapes,
// so that switching on string(KeyName(k)) allocates nothing for plain keys.
func KeyName(key []byte) []byte {
	for _, c := range key {
		if c == '\\' {
			s, _ := stringValue(key)
			return []byte(s)
		}
	}
	if len(key) < 2 {
		return nil
	}
	return key[1 : len(key)-1]
}

func isNumber(raw []byte) bool {
	return len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'))
}

// StringToken decodes a raw JSON token that must be a string, as JSON.parse
// would; ok is false for any other kind of token.
func StringToken(raw []byte) (s string, ok bool) { return stringValue(raw) }

// EachMember calls fn for each member of a JSON object, in document order,
// with the raw key token (quotes included) and the raw value token. obj
// must be valid JSON (json.Valid) starting with '{'.
func EachMember(obj []byte, fn func(key, val []byte)) { eachMember(obj, fn) }

// SkipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func SkipSpace(b []byte, i int) int { return skipSpace(b, i) }

// EachElement calls fn for each element of a JSON array until fn returns
// false. arr must be valid JSON starting with '['.
func EachElement(arr []byte, fn func(val []byte) bool) { eachElement(arr, fn) }
