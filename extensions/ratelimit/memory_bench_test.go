package ratelimit

import (
	"context"
	"strconv"
	"testing"
)

func BenchmarkMemoryConsume(b *testing.B) {
	m := NewMemory(Config{Points: 1 << 30})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Consume(ctx, "ip:203.0.113.9", 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemoryConsume_Parallel1024Keys(b *testing.B) {
	m := NewMemory(Config{Points: 1 << 30})
	ctx := context.Background()
	var keys [1024]string
	for i := range keys {
		keys[i] = "ip:198.51.100." + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Consume(ctx, keys[i%len(keys)], 1); err != nil {
				b.Error(err)
				return
			}
			i += 7
		}
	})
}
