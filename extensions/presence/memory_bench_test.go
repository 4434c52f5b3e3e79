package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
)

// benchmarkMemoryJoinLeave joins size members to one topic, then measures a
// join and the leave of one more member among them: the cost must not grow
// with size (docs/design.md, lesson L-29).
func benchmarkMemoryJoinLeave(b *testing.B, size int) {
	m := NewMemory(Config{})
	ctx := context.Background()
	data := json.RawMessage(`{"id":"x"}`)
	for i := range size {
		key := fmt.Sprintf("u%d", i)
		if _, err := m.Join(ctx, "room", key, key, data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Join(ctx, "room", "bench", "bench", data); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Leave(ctx, "room", "bench", "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemoryJoinLeave_100(b *testing.B)    { benchmarkMemoryJoinLeave(b, 100) }
func BenchmarkMemoryJoinLeave_100000(b *testing.B) { benchmarkMemoryJoinLeave(b, 100_000) }
