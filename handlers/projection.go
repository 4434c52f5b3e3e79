package handlers

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// maxProjection caps a member's public data (docs/protocol.md §8: 2 KiB JSON).
const maxProjection = 2048

// secretKey matches identity keys never shown to other users by default
// (docs/protocol.md §6.1, docs/design.md, lessons: tokens in userData leaked).
var secretKey = regexp.MustCompile(`(?i)token|secret|password|auth|session|cookie|jwt|credential`)

func isSecretKey(k string) bool {
	return strings.HasPrefix(k, "__") || k == "constructor" || k == "prototype" || secretKey.MatchString(k)
}

// project returns the public projection of an identity object: the
// selected top-level fields in the order given, or, without a selection,
// the identity with secret keys removed at every depth. A selected field
// is shown even if its own name looks secret (the operator named it), but
// secret keys nested inside it are removed: selecting "profile" must not
// publish profile.apiToken (TestHostileSecretsNeverLeak). Members that would
// push it past 2 KiB are left out, in order, so the projection stays a
// valid object.
func project(identity json.RawMessage, selectFields []string) json.RawMessage {
	if len(identity) == 0 || identity[0] != '{' {
		return json.RawMessage("{}")
	}
	var out bytes.Buffer
	out.WriteByte('{')
	n := 0
	add := func(key, val []byte) {
		if out.Len()+len(key)+len(val)+3 > maxProjection {
			return
		}
		if n > 0 {
			out.WriteByte(',')
		}
		out.Write(key)
		out.WriteByte(':')
		out.Write(val)
		n++
	}
	if selectFields != nil {
		fields := map[string][]byte{}
		keys := map[string][]byte{}
		wire.EachMember(identity, func(k, v []byte) {
			if s, ok := wire.StringToken(k); ok {
				fields[s], keys[s] = v, k
			}
		})
		for _, f := range selectFields {
			if v, ok := fields[f]; ok {
				add(keys[f], stripSecrets(v)) // a missing field is simply absent
			}
		}
	} else {
		wire.EachMember(identity, func(k, v []byte) {
			if s, ok := wire.StringToken(k); ok && !isSecretKey(s) {
				add(k, stripSecrets(v))
			}
		})
	}
	out.WriteByte('}')
	return out.Bytes()
}

// stripSecrets removes secret keys from nested objects and arrays.
func stripSecrets(v []byte) []byte {
	switch v[0] {
	case '{':
		var out bytes.Buffer
		out.WriteByte('{')
		n := 0
		wire.EachMember(v, func(k, val []byte) {
			if s, ok := wire.StringToken(k); ok && isSecretKey(s) {
				return
			}
			if n > 0 {
				out.WriteByte(',')
			}
			out.Write(k)
			out.WriteByte(':')
			out.Write(stripSecrets(val))
			n++
		})
		out.WriteByte('}')
		return out.Bytes()
	case '[':
		var out bytes.Buffer
		out.WriteByte('[')
		n := 0
		wire.EachElement(v, func(el []byte) bool {
			if n > 0 {
				out.WriteByte(',')
			}
			out.Write(stripSecrets(el))
			n++
			return true
		})
		out.WriteByte(']')
		return out.Bytes()
	}
	return v
}

// identityField returns String(identity[field]) for strings and numbers,
// "" otherwise.
func identityField(identity json.RawMessage, field string) string { return userOf(identity, field) }
