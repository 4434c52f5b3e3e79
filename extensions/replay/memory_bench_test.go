package replay

import (
	"context"
	"encoding/json"
	"testing"
)

// payload64 is a typical small event body: 64 bytes.
var payload64 = json.RawMessage(`{"id":123456,"text":"hello, world","user":"u-42","ts":17000000}`)

func BenchmarkMemoryAppend(b *testing.B) {
	m := NewMemory(Config{})
	ctx := context.Background()
	for range DefaultSize { // steady state: the ring is full and wraps
		_, _ = m.Append(ctx, "bench", "created", payload64)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(payload64)))
	for b.Loop() {
		if _, err := m.Append(ctx, "bench", "created", payload64); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemoryAppend_Parallel64Topics(b *testing.B) {
	m := NewMemory(Config{})
	ctx := context.Background()
	var topics [64]string
	for i := range topics {
		topics[i] = "bench:" + string(rune('A'+i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Append(ctx, topics[i%len(topics)], "created", payload64); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkMemorySince_10of1000(b *testing.B) {
	m := NewMemory(Config{})
	ctx := context.Background()
	for range DefaultSize + 500 { // the ring has wrapped, as in steady state
		_, _ = m.Append(ctx, "bench", "created", payload64)
	}
	head, _ := m.Head(ctx, "bench")
	b.ReportAllocs()
	for b.Loop() {
		rg, err := m.Since(ctx, "bench", head-10)
		if err != nil || len(rg.Entries) != 10 {
			b.Fatalf("Since: %d entries, %v", len(rg.Entries), err)
		}
	}
}
