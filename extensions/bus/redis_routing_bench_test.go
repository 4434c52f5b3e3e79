package bus

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// BenchmarkRedisRouting puts 8 receiving instances on one Redis, 1 000
// topics each held by one of them, and publishes round-robin over the
// topics from a ninth: units received per instance per publish (rx/inst,
// 1.0 = the whole firehose) and the Redis server's CPU per publish, for
// the one channel, channel-per-topic and hashed partitions; the cluster-*
// cases do the same on a Redis Cluster of 3 masters and 3 replicas, whose
// CPU is summed over the 6 nodes (channel-per-topic is sharded there). The
// servers' idle CPU is taken off.
//
//	go test -run '^$' -bench RedisRouting -benchtime 20000x ./extensions/bus/
func BenchmarkRedisRouting(b *testing.B) {
	for _, mode := range []struct {
		name    string
		rt      *Routing
		cluster bool
	}{
		{"single", nil, false},
		{"routed", &Routing{}, false},
		{"partitions-16", &Routing{Partitions: 16}, false},
		{"partitions-256", &Routing{Partitions: 256}, false},
		{"cluster-single", nil, true},
		{"cluster-routed", &Routing{}, true},
		{"cluster-partitions-256", &Routing{Partitions: 256}, true},
	} {
		b.Run(mode.name, func(b *testing.B) { benchmarkRouting(b, mode.rt, mode.cluster) })
	}
}

func benchmarkRouting(b *testing.B, rt *Routing, cluster bool) {
	const instances, topics = 8, 1000
	var (
		connect func() rueidis.Client
		cpu     func() []float64 // per node
	)
	if cluster {
		c := testsvc.StartCluster(b)
		connect = func() rueidis.Client { return c.Client(b) }
		cpu = func() []float64 {
			var out []float64
			for _, n := range c.Nodes {
				m, err := c.NodeDo(n, "INFO", "cpu")
				if err != nil {
					b.Fatal(err)
				}
				info, _ := m.ToString()
				out = append(out, cpuOf(info))
			}
			return out
		}
	} else {
		srv := testsvc.StartRedis(b)
		connect = func() rueidis.Client { return testsvc.Connect(b, srv.Addr()) }
		admin := connect()
		cpu = func() []float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			info, err := admin.Do(ctx, admin.B().Info().Section("cpu").Build()).ToString()
			if err != nil {
				b.Fatal(err)
			}
			return []float64{cpuOf(info)}
		}
	}
	var received atomic.Int64
	var bound atomic.Int64 // units of a topic the instance holds
	buses := make([]*Redis, instances)
	for i := range buses {
		mine := i
		buses[i] = newRedisBus(b, connect(), RedisConfig{Channel: "bus", Routing: rt, MaxPending: 1 << 16,
			Handler: func(msgs []Message) {
				received.Add(1)
				var n int
				_, _ = fmt.Sscanf(msgs[0].Topic, "topic-%d", &n)
				if n%instances == mine {
					bound.Add(1)
				}
			}})
	}
	for n := range topics {
		<-buses[n%instances].Hold(fmt.Sprintf("topic-%d", n))
	}
	pub := newRedisBus(b, connect(), RedisConfig{Channel: "bus", Routing: rt, QueueSize: 1 << 16, Handler: func([]Message) {}})
	names := make([]string, topics)
	for n := range names {
		names[n] = fmt.Sprintf("topic-%d", n)
	}
	ctx := context.Background()
	// The servers' idle cost (cron, and the cluster bus's pings between
	// six nodes) is measured first and taken off.
	idle0, idleStart := cpu(), time.Now()
	time.Sleep(time.Second)
	idle1, idleFor := cpu(), time.Since(idleStart).Seconds()
	cpu0, start := cpu(), time.Now()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for {
			err := pub.Publish(ctx, []Message{{Topic: names[i%topics], Event: "e", Data: []byte("1")}})
			if err == nil {
				break
			}
			if !errors.Is(err, ErrBackpressure) {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Microsecond)
		}
		if i%1024 == 1023 {
			for bound.Load() < int64(i+1)-2048 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for bound.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cpu1, elapsed := cpu(), time.Since(start).Seconds()
	used, busiest := 0.0, 0.0
	for i := range cpu1 {
		u := cpu1[i] - cpu0[i] - (idle1[i]-idle0[i])/idleFor*elapsed
		used += u
		busiest = max(busiest, u)
	}
	b.ReportMetric(float64(received.Load())/float64(instances)/float64(b.N), "rx/inst")
	b.ReportMetric(used*1e6/float64(b.N), "redis-µs/pub")
	b.ReportMetric(busiest*1e6/float64(b.N), "busiest-node-µs/pub")
	if bound.Load() != int64(b.N) {
		b.Fatalf("%d of %d units reached the instance holding their topic", bound.Load(), b.N)
	}
}

// cpuOf sums used_cpu_sys and used_cpu_user of an INFO cpu answer.
func cpuOf(info string) float64 {
	var sys, user float64
	for _, line := range splitLines(info) {
		_, _ = fmt.Sscanf(line, "used_cpu_sys:%f", &sys)
		_, _ = fmt.Sscanf(line, "used_cpu_user:%f", &user)
	}
	return sys + user
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// BenchmarkRedisShardedHold holds b.N topics on a routed bus on a Redis
// Cluster of 3 masters and 3 replicas, each an SSUBSCRIBE and a goroutine
// of its own, and waits until every one is confirmed: the time, the heap
// and the goroutine stacks per held topic.
//
//	go test -run '^$' -bench RedisShardedHold -benchtime 10000x ./extensions/bus/
func BenchmarkRedisShardedHold(b *testing.B) {
	c := testsvc.StartCluster(b)
	bus := newRedisBus(b, c.Client(b), RedisConfig{Routing: &Routing{}, Handler: func([]Message) {}})
	names := make([]string, b.N)
	for i := range names {
		names[i] = fmt.Sprintf("topic-%d", i)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	b.ResetTimer()
	ready := make([]<-chan struct{}, b.N)
	for i, n := range names {
		ready[i] = bus.Hold(n)
	}
	for _, r := range ready {
		select {
		case <-r:
		case <-time.After(30 * time.Second):
			b.Fatal("a hold not confirmed within 30s")
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "heap-B/topic")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/float64(b.N), "stack-B/topic")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(b.N), "goroutines/topic")
}
