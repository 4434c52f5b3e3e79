package handlers

import (
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
)

// benchmarkHubBroadcast measures one publish to subs subscribers, from
// stamping to the frame sitting in every subscriber's queue: encoding once
// and enqueueing, without sockets (socketless connections keep their write
// loop parked, see newMemConn). Queues are emptied every 64 publishes off
// the clock, as write loops would. The goal is a constant number of
// allocations per publish, none per subscriber (docs/design.md, conventions §6).
func benchmarkHubBroadcast(b *testing.B, subs int) {
	g := memGateway(b)
	const drainEvery = 64
	conns := make([]*conn, subs)
	for i := range conns {
		c := newMemConn(g, false)
		c.queue = make([]outFrame, 0, drainEvery)
		g.hub.subscribe("bench", c, nil)
		conns[i] = c
	}
	drain := func() {
		for _, c := range conns {
			c.mu.Lock()
			clear(c.queue)
			c.queue, c.queued = c.queue[:0], 0
			c.mu.Unlock()
		}
	}
	msgs := []bus.Message{{Topic: "bench", Event: "created", Data: []byte(`{"id":1,"title":"benchmark"}`)}}
	now := time.Now()
	// Warm up: the first publish builds the topic's subscriber snapshot.
	if _, err := g.hub.publish(msgs, true, nil, now); err != nil {
		b.Fatal(err)
	}
	drain()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%drainEvery == drainEvery-1 {
			b.StopTimer()
			drain()
			b.StartTimer()
		}
		msgs[0].Seq = 0
		if n, err := g.hub.publish(msgs, true, nil, now); err != nil || n != subs {
			b.Fatalf("publish enqueued %d frames (%v), want %d", n, err, subs)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(subs), "ns/sub")
}

func BenchmarkHubBroadcast_1000Subs(b *testing.B)  { benchmarkHubBroadcast(b, 1000) }
func BenchmarkHubBroadcast_10000Subs(b *testing.B) { benchmarkHubBroadcast(b, 10000) }
