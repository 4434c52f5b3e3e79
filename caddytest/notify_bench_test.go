package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// BenchmarkNotifyLatency measures NOTIFY → client latency at a steady
// rate: a pgx pool sends pg_notify 500 times a second for 10 s, each
// payload carrying its send time, and a WebSocket client reports when its
// frame arrived. "all" is one instance in mode all; "leader_cluster" is
// three instances with Redis, the client on an instance that does not
// lead (the notification crosses the bus). Run once:
//
//	go test ./caddytest -run '^$' -bench NotifyLatency -benchtime 1x
func BenchmarkNotifyLatency(b *testing.B) {
	b.Run("all", func(b *testing.B) {
		channel := notifyChannel()
		in := startCaddyWith(b, pgGlobal(""), fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		notify %s
	}`, channel))
		awaitListening(b, channel, in)
		measureNotifyLatency(b, channel, in)
	})
	b.Run("leader_cluster", func(b *testing.B) {
		channel := notifyChannel()
		nodes := startNotifyCluster(b, 3, fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		notify %s
	}`, channel))
		leader := awaitLeader(b, channel, nodes)
		measureNotifyLatency(b, channel, nodes[(leader+1)%len(nodes)])
	})
}

func measureNotifyLatency(b *testing.B, channel string, in *instance) {
	const (
		rate     = 500
		duration = 10 * time.Second
		total    = int(rate * duration / time.Second)
	)
	pool, _ := testsvc.Postgres(b)
	c := dial(b, in)
	c.welcome()
	c.send(`{"type":"subscribe","topic":"lat","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"lat","ref":1}`)

	b.ResetTimer()
	sendErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		ctx := context.Background()
		for range total {
			<-tick.C
			payload := `{"topic":"lat","event":"e","data":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}`
			if _, err := pool.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	lat := make([]time.Duration, 0, total)
	for len(lat) < total {
		raw := c.next(10 * time.Second)
		now := time.Now()
		var e envelope
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			b.Fatalf("frame %s: %v", raw, err)
		}
		if e.Topic != "lat" {
			continue
		}
		sent, err := strconv.ParseInt(string(e.Data), 10, 64)
		if err != nil {
			b.Fatalf("data %s", e.Data)
		}
		lat = append(lat, now.Sub(time.Unix(0, sent)))
	}
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(1), "max-ms")
	b.ReportMetric(float64(len(lat)), "notifications")
}
