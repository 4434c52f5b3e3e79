package replay

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
)

// benchData is a chat-line-sized event, as in BenchmarkRedisAppend.
var benchData = json.RawMessage(`{"id":12345,"text":"a message of about one hundred bytes, as a chat line would be","ok":true}`)

// BenchmarkPostgresAppend measures one publisher appending to one topic:
// one round trip per append (seq allocation, insert and trim are one
// statement).
func BenchmarkPostgresAppend(b *testing.B) {
	s, _, _ := newPostgresStore(b, PostgresConfig{})
	topic := uniqueTopic("bench")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Append(ctx, topic, "created", benchData); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// BenchmarkPostgresAppend_Parallel64Topics measures 64 concurrent
// publishers on 64 topics through the test pool (pgxpool's default size:
// max(4, CPUs) connections).
func BenchmarkPostgresAppend_Parallel64Topics(b *testing.B) {
	benchPostgresParallel(b, 64)
}

// BenchmarkPostgresAppend_Parallel1Topic is the same with every publisher
// on one topic: appends serialize on the topic's counter row.
func BenchmarkPostgresAppend_Parallel1Topic(b *testing.B) {
	benchPostgresParallel(b, 1)
}

func benchPostgresParallel(b *testing.B, nTopics int) {
	s, _, _ := newPostgresStore(b, PostgresConfig{})
	topics := make([]string, nTopics)
	for i := range topics {
		topics[i] = uniqueTopic("bench")
	}
	var next sync.Mutex
	n := 0
	b.SetParallelism(32) // 32 × GOMAXPROCS goroutines
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		topic := topics[n%len(topics)]
		n++
		next.Unlock()
		ctx := context.Background()
		for pb.Next() {
			if _, err := s.Append(ctx, topic, "created", benchData); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}
