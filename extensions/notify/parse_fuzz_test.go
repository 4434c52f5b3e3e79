package notify

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// newParser returns a Listener that is never started, for its parse: no
// connection is made before Start.
func newParser(tb testing.TB, cfg Config) *Listener {
	tb.Helper()
	cfg.ConnString = "postgres://x@127.0.0.1:1/x"
	cfg.Channel = "fuzz"
	cfg.Handler = func(Notification) {}
	l, err := NewListener(cfg)
	if err != nil {
		tb.Fatalf("NewListener: %v", err)
	}
	tb.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

// FuzzParseEveryConfig complements FuzzParse (notify_fuzz_test.go): it
// feeds NOTIFY payloads to parsers with the default field names, mapped
// ones and non-ASCII topics allowed. Properties: it never panics; a dropped payload gets a known reason and
// an empty Notification; an accepted one has a valid non-system topic
// (ASCII only unless allowed), a valid event, and Data that is one valid
// JSON value, valid UTF-8 whenever the payload is (PostgreSQL guarantees
// that of a UTF8 database).
func FuzzParseEveryConfig(f *testing.F) {
	for _, s := range []string{
		`{"topic":"chat:1","event":"msg","data":{"b":1,"a":[1, 2]}}`,
		`{"table":"orders","op":"INSERT","row":{"id":7},"topic":"ignored"}`,
		`{"topic":"ok","event":"e","data":1}`,
		`{"topic":"t","event":"e"}`,
		`{"topic":"t","event":"e","data":null}`,
		`{"topic":"__realtime","event":"e"}`,
		`{"topic":"__presence:x","event":"e"}`,
		`{"topic":"has\"quote","event":"e"}`,
		`{"topic":"t","event":"a\u0001b"}`,
		`{"topic":"caf\u00e9","event":"e"}`,
		`{"topic":"\ud800","event":"e"}`,
		`{"topic":"t","topic":"__x","event":"e"}`,
		`{"topic":"t","event":"e","data":"` + "\xff" + `"}`,
		`{"topic":"t","event":"e","data":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
		`{"topic":"` + strings.Repeat("x", 257) + `","event":"e"}`,
		`{"topic":"t","event":"e","data":{"x":` + strings.Repeat(" ", 7990) + `1}}`,
		`{"topic":1,"event":"e"}`,
		`[1,2]`, `null`, `"s"`, ``, `{`, `{}`, ` {"topic":"t","event":"e"} `,
	} {
		f.Add(s)
	}
	parsers := map[string]*Listener{
		"default":   newParser(f, Config{}),
		"mapped":    newParser(f, Config{TopicField: "table", EventField: "op", DataField: "row"}),
		"non-ASCII": newParser(f, Config{AllowNonASCIITopics: true}),
	}
	f.Fuzz(func(t *testing.T, payload string) {
		for name, l := range parsers {
			n, reason := l.parse(payload)
			if reason != "" {
				switch reason {
				case ReasonInvalid, ReasonSystemTopic, ReasonTooLarge:
				default:
					t.Fatalf("%s: unknown drop reason %q", name, reason)
				}
				if n.Topic != "" || n.Event != "" || n.Data != nil {
					t.Fatalf("%s: dropped (%s) with a Notification %+v", name, reason, n)
				}
				if len(payload) >= MaxPayload && reason != ReasonTooLarge {
					t.Fatalf("%s: a payload of %d bytes dropped as %s, want %s", name, len(payload), reason, ReasonTooLarge)
				}
				continue
			}
			if len(payload) >= MaxPayload {
				t.Fatalf("%s: accepted a payload of %d bytes", name, len(payload))
			}
			if !wire.ValidTopic(n.Topic, l.cfg.AllowNonASCIITopics) || wire.IsSystem(n.Topic) {
				t.Fatalf("%s: accepted topic %q", name, n.Topic)
			}
			if !wire.ValidEvent(n.Event) {
				t.Fatalf("%s: accepted event %q", name, n.Event)
			}
			if !json.Valid(n.Data) {
				t.Fatalf("%s: data %q is not one JSON value", name, n.Data)
			}
			if utf8.ValidString(payload) && !utf8.Valid(n.Data) {
				t.Fatalf("%s: data %q of a UTF-8 payload is not UTF-8", name, n.Data)
			}
		}
	})
}
