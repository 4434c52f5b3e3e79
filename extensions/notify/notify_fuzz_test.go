package notify

import (
	"encoding/json"
	"testing"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// FuzzParse feeds parse payloads as pg_notify delivers them: whatever the
// bytes, it never panics, and what it accepts is a valid, non-system
// topic, a valid event and valid JSON data.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"topic":"todos","event":"created","data":{"id":1,"title":"milk","done":false}}`,
		`{"topic" : "todos", "event" : "created", "data" : {"id" : 2, "partial" : true}}`,
		`{"table":"orders","op":"INSERT","row":{"id":7}}`,
		`{"topic":"__realtime","event":"degraded"}`,
		`{"topic":"t","event":"e","data":}`,
		`[1,2]`,
		`null`,
		``,
	} {
		f.Add(s)
	}
	l, err := NewListener(Config{ConnString: "postgres://u@h/db", Channel: "c", Handler: func(Notification) {}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		n, reason := l.parse(payload)
		if reason != "" {
			return
		}
		if !wire.ValidTopic(n.Topic, false) || wire.IsSystem(n.Topic) || !wire.ValidEvent(n.Event) || !json.Valid(n.Data) {
			t.Fatalf("parse(%q) accepted %+v", payload, n)
		}
	})
}
