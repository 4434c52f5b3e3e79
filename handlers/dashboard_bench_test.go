package handlers

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
)

// benchmarkDashboardSample measures one dashboard sample of a gateway
// with topics topics of one subscriber each: the index walk, the metric
// reads and the top lists (memory backends, no replay or presence rule).
// Its cost is what a viewer adds to the gateway every 2 s.
func benchmarkDashboardSample(b *testing.B, topics int) {
	g := memGateway(b)
	c := newMemConn(g, false)
	for i := range topics {
		g.hub.subscribe("topic:"+strconv.Itoa(i), c, nil)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var size int
	for range b.N {
		snap := g.dashboardSample(ctx, 0)
		if size == 0 {
			j, _ := json.Marshal(snap)
			size = len(j)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(size), "json_bytes")
}

func BenchmarkDashboardSample_1000Topics(b *testing.B)   { benchmarkDashboardSample(b, 1000) }
func BenchmarkDashboardSample_100000Topics(b *testing.B) { benchmarkDashboardSample(b, 100000) }
