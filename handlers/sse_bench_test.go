package handlers

import (
	"context"
	"net/http"
	"testing"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// discardWriter is a ResponseWriter that drops what it is given and
// supports Flush, as a server's does.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}
func (d *discardWriter) Flush()                      {}

// BenchmarkSSEWrite_100Frames measures one drain of 100 stamped envelopes
// of 100 bytes of data on a replayed topic into SSE events, ids included:
// the per-subscriber cost an SSE stream adds over a WebSocket's shared frame.
func BenchmarkSSEWrite_100Frames(b *testing.B) {
	cfg := testConfig()
	cfg.Replay = []ReplayConfig{{Topics: "chat"}}
	g, err := New(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close(context.Background())
	c := &conn{g: g, sse: newSSEStream(&discardWriter{h: http.Header{}}, []string{"chat", "other"})}
	c.sse.index["chat"] = 0
	c.sse.opened = true
	data := []byte(`{"text":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901"}`)
	batch := make([]outFrame, 100)
	for i := range batch {
		batch[i] = outFrame{b: wire.AppendEnvelope(nil, "chat", "msg", data, uint64(1000+i))}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if n, failed := c.sse.write(c, batch); n != len(batch) || failed {
			b.Fatalf("wrote %d, failed %v", n, failed)
		}
	}
}
