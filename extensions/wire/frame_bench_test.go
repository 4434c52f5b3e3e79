package wire

import (
	"fmt"
	"strings"
	"testing"
)

// Inbound frame parsing runs on every client frame; a frame the gateway
// does not recognise is an application message and must be told apart
// quickly too.
func BenchmarkParse(b *testing.B) {
	topics := make([]string, 50)
	for i := range topics {
		topics[i] = fmt.Sprintf("%q", fmt.Sprintf("room:%d", i))
	}
	frames := []struct{ name, msg string }{
		{"subscribe", `{"type":"subscribe","topic":"chat:lobby","ref":7}`},
		{"subscribe-batch-50", `{"type":"subscribe-batch","topics":[` + strings.Join(topics, ",") + `],"ref":8}`},
		{"hello", `{"type":"hello","caps":["batch"]}`},
		{"cursor", `{"type":"cursor","topic":"canvas:1","data":{"x":120,"y":48}}`},
		{"app-message", `{"kind":"chat","text":"` + strings.Repeat("x", 100) + `"}`},
	}
	for _, f := range frames {
		b.Run(f.name, func(b *testing.B) {
			msg := []byte(f.msg)
			var fr Frame
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				Parse(msg, &fr)
			}
		})
	}
}
