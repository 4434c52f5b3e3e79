package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/internal/lazyredis"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

var instanceSerial atomic.Int64

// newRedisBus starts a Redis bus on client, closed in t.Cleanup (before
// the client, whose cleanup was registered first).
func newRedisBus(t testing.TB, client rueidis.Client, cfg RedisConfig) *Redis {
	t.Helper()
	if cfg.InstanceID == "" {
		cfg.InstanceID = fmt.Sprintf("test-%d", instanceSerial.Add(1))
	}
	r, err := NewRedis(client, cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { mustClose(t, r) })
	return r
}

// newRedisPair puts two Redis buses, on two clients as two instances
// would be, on a channel of the test's own.
func newRedisPair(t *testing.T) (a, b Bus, recvA, recvB <-chan []Message) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	ha, recvA := recorder(t, 1<<14)
	hb, recvB := recorder(t, 1<<14)
	channel := prefix + "bus"
	a = newRedisBus(t, ca, RedisConfig{Channel: channel, Handler: ha, OnError: logErrors(t)})
	b = newRedisBus(t, cb, RedisConfig{Channel: channel, Handler: hb, OnError: logErrors(t)})
	return a, b, recvA, recvB
}

// logErrors reports a bus's errors in the test log, which -v shows.
func logErrors(t testing.TB) func(error) {
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) })
	return func(err error) {
		if !done.Load() {
			t.Logf("OnError: %v", err)
		}
	}
}

func TestRedis(t *testing.T) {
	testBus(t, newRedisPair)
}

func TestNewRedisRefusesBadConfig(t *testing.T) {
	client, _ := testsvc.Redis(t)
	h := func([]Message) {}
	for _, tc := range []struct {
		name   string
		client rueidis.Client
		cfg    RedisConfig
	}{
		{"no client", nil, RedisConfig{InstanceID: "a", Handler: h}},
		{"no instance id", client, RedisConfig{Handler: h}},
		{"the store's instance id", client, RedisConfig{InstanceID: StoreInstanceID, Handler: h}},
		{"an instance id with invalid UTF-8", client, RedisConfig{InstanceID: "\xff", Handler: h}},
		{"no handler", client, RedisConfig{InstanceID: "a"}},
		{"a negative probe interval", client, RedisConfig{InstanceID: "a", Handler: h, ProbeInterval: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := NewRedis(tc.client, tc.cfg); err == nil {
				mustClose(t, r)
				t.Fatal("NewRedis succeeded")
			}
		})
	}
}

func TestNewRedisFailsWithoutASubscription(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := testsvc.Connect(t, srv.Addr())
	srv.Kill()
	r, err := NewRedis(client, RedisConfig{InstanceID: "a", Handler: func([]Message) {}, Timeout: 200 * time.Millisecond})
	if err == nil {
		mustClose(t, r)
		t.Fatal("NewRedis succeeded with Redis down")
	}
	if !strings.Contains(err.Error(), "did not confirm the subscription") {
		t.Fatalf("NewRedis returned %v, want a subscription error", err)
	}
}

// With StartUnreachable, a bus on a client that has never reached Redis
// (lazyredis, as the gateway uses it) starts unhealthy instead of failing,
// and relays once Redis appears.
func TestNewRedisStartsUnreachableAndRecovers(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill()
	lazy := lazyredis.New(lazyredis.Config{
		Option:     rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true, DisableRetry: true},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	t.Cleanup(lazy.Close)
	health := make(chan bool, 8)
	recv := make(chan []Message, 8)
	a := newRedisBus(t, lazy, RedisConfig{
		Channel: "bus", ProbeInterval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, StartUnreachable: true,
		OnHealth: func(ok bool) { health <- ok },
		Handler:  func(msgs []Message) { recv <- msgs },
	})
	select {
	case ok := <-health:
		if ok {
			t.Fatal("first OnHealth(true), want false")
		}
	default:
		t.Fatal("NewRedis returned without calling OnHealth(false)")
	}
	if a.Healthy() {
		t.Fatal("Healthy() with Redis unreachable")
	}
	srv.Restart()
	select {
	case ok := <-health:
		if !ok {
			t.Fatal("OnHealth(false) twice")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no recovery within 10s of Redis appearing")
	}
	b := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{Channel: "bus", Handler: func([]Message) {}})
	mustPublish(t, b, msg("after", 1))
	expectUnit(t, recv, msg("after", 1))
}

// publishRaw PUBLISHes payload as redis-cli would.
func publishRaw(t testing.TB, client rueidis.Client, channel, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Do(ctx, client.B().Publish().Channel(channel).Message(payload).Build()).Error(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
}

func TestRedisDeliversAnOutsidePublish(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	channel := prefix + "bus"
	ha, recvA := recorder(t, 16)
	hb, recvB := recorder(t, 16)
	newRedisBus(t, client, RedisConfig{Channel: channel, Handler: ha})
	newRedisBus(t, client, RedisConfig{Channel: channel, Handler: hb})
	publishRaw(t, client, channel, `{"topic":"chat","event":"created","data":{"id":1}}`)
	want := Message{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1}`)}
	expectUnit(t, recvA, want)
	expectUnit(t, recvB, want)
}

func TestRedisDropsHostileEnvelopesAndCountsThem(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	channel := prefix + "bus"
	h, recv := recorder(t, 16)
	r := newRedisBus(t, client, RedisConfig{Channel: channel, Handler: h, EnvelopeOptions: EnvelopeOptions{MaxBytes: 1024}})
	hostile := []struct{ name, env string }{
		{"oversized", `{"topic":"t","event":"e","data":"` + strings.Repeat("x", 1024) + `"}`},
		{"a topic with a quote", `{"topic":"a\"b","event":"e"}`},
		{"a topic with a newline", `{"topic":"a\nb","event":"e"}`},
		{"a system topic", `{"topic":"__presence:room","event":"join","data":{"key":"forged"}}`},
		{"a system topic in a batch", `{"batch":[{"topic":"ok","event":"e"},{"topic":"__realtime","event":"degraded"}]}`},
		{"truncated JSON", `{"topic":"t","event":`},
		{"not an object", `["topic","t"]`},
		{"invalid UTF-8", "{\"topic\":\"t\xff\",\"event\":\"e\"}"},
		{"a numeric topic", `{"topic":1,"event":"e"}`},
		{"a string seq", `{"topic":"t","event":"e","seq":"1"}`},
		{"a numeric instance id", `{"instanceId":5,"topic":"t","event":"e"}`},
		{"a user outside messages", `{"topic":"t","event":"e","user":"u"}`},
		{"an empty batch", `{"batch":[]}`},
		{"a batch of numbers", `{"batch":[1,2]}`},
	}
	for _, h := range hostile {
		publishRaw(t, client, channel, h.env)
	}
	publishRaw(t, client, channel, `{"topic":"valid","event":"e","data":[1]}`)
	expectUnit(t, recv, Message{Topic: "valid", Event: "e", Data: json.RawMessage(`[1]`)})
	if got := r.Invalid(); got != uint64(len(hostile)) {
		t.Fatalf("Invalid() = %d, want %d", got, len(hostile))
	}
	if r.Dropped() != 0 {
		t.Fatalf("Dropped() = %d, want 0", r.Dropped())
	}
}

// A replay store's envelopes reach every instance, the appending one
// included, in seq order; a unit that claims to come from an instance is
// still dropped there.
func TestRedisDeliversStoreEnvelopesToEveryInstance(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	channel := prefix + "bus"
	ha, recvA := recorder(t, 64)
	hb, recvB := recorder(t, 64)
	a := newRedisBus(t, ca, RedisConfig{Channel: channel, Handler: ha, InstanceID: "instance-a"})
	newRedisBus(t, cb, RedisConfig{Channel: channel, Handler: hb, InstanceID: "instance-b"})
	store, err := replay.NewRedis(ca, replay.RedisConfig{KeyPrefix: prefix, Channel: channel})
	if err != nil {
		t.Fatalf("replay.NewRedis: %v", err)
	}
	for i := 1; i <= 3; i++ {
		seq, err := store.AppendAndPublish(context.Background(), "room:1", "msg", json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)))
		if err != nil || seq != uint64(i) {
			t.Fatalf("AppendAndPublish = %d, %v; want %d", seq, err, i)
		}
	}
	for i := 1; i <= 3; i++ {
		want := Message{Topic: "room:1", Event: "msg", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), Seq: uint64(i)}
		expectUnit(t, recvA, want)
		expectUnit(t, recvB, want)
	}

	publishRaw(t, cb, channel, `{"instanceId":"instance-a","topic":"spoof","event":"e"}`)
	mustPublish(t, a, msg("marker", 1))
	expectUnit(t, recvB, Message{Topic: "spoof", Event: "e"})
	expectUnit(t, recvB, msg("marker", 1))
	// b published nothing a would drop, and a dropped its "own" unit: a
	// has nothing, which a unit published after shows.
	publishRaw(t, cb, channel, `{"topic":"after","event":"e"}`)
	expectUnit(t, recvA, Message{Topic: "after", Event: "e"})
}

func TestRedisRecoversFromARedisRestart(t *testing.T) {
	srv := testsvc.StartRedis(t)
	type event struct {
		bus     string
		healthy bool
	}
	health := make(chan event, 64)
	newBus := func(name string) (*Redis, <-chan []Message) {
		recv := make(chan []Message, 64)
		r := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{
			Channel:       "bus",
			ProbeInterval: 100 * time.Millisecond,
			Timeout:       500 * time.Millisecond,
			OnHealth:      func(ok bool) { health <- event{name, ok} },
			OnError:       logErrors(t),
			Handler: func(msgs []Message) {
				if msgs[0].Topic != "load" {
					recv <- msgs
				}
			},
		})
		return r, recv
	}
	a, recvA := newBus("a")
	b, recvB := newBus("b")
	expectHealth := func(want bool) {
		t.Helper()
		seen := map[string]bool{}
		deadline := time.After(10 * time.Second)
		for len(seen) < 2 {
			select {
			case e := <-health:
				if e.healthy != want {
					t.Fatalf("bus %s reported healthy=%v, want %v", e.bus, e.healthy, want)
				}
				seen[e.bus] = true
			case <-deadline:
				t.Fatalf("buses %v reported healthy=%v within 10s, want both", seen, want)
			}
		}
	}

	// Load: a publishes continuously; every call must return promptly,
	// with nil or ErrBackpressure, whatever Redis does.
	var published atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			err := a.Publish(context.Background(), []Message{msg("load", i)})
			if err != nil && !errors.Is(err, ErrBackpressure) {
				t.Errorf("Publish during the outage: %v", err)
				return
			}
			published.Add(1)
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	srv.Kill()
	expectHealth(false)
	if a.Healthy() || b.Healthy() {
		t.Fatal("Healthy() is true after OnHealth(false)")
	}
	n := published.Load()
	testsvc.WaitFor(t, 5*time.Second, "more publishes", func() bool { return published.Load() > n+50 })

	srv.Restart()
	expectHealth(true)
	if a.Lost() == 0 {
		t.Error("Lost() = 0 after relaying through an outage")
	}
	mustPublish(t, a, msg("after", 1))
	expectUnit(t, recvB, msg("after", 1))
	mustPublish(t, b, msg("after", 2))
	expectUnit(t, recvA, msg("after", 2))
}

// CLIENT KILL TYPE pubsub closes the subscriber's connection: a bus on a
// client without retries resubscribes through its own loop, one on a
// client with rueidis's retries through rueidis's.
func TestRedisResubscribesAfterClientKill(t *testing.T) {
	srv := testsvc.StartRedis(t)
	retrying, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(retrying.Close)
	ha, recvA := recorder(t, 1024)
	hb, recvB := recorder(t, 1024)
	a := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{Channel: "bus", Handler: ha, OnError: logErrors(t)})
	b := newRedisBus(t, retrying, RedisConfig{Channel: "bus", Handler: hb, OnError: logErrors(t)})

	admin := testsvc.Connect(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	killed, err := admin.Do(ctx, admin.B().ClientKill().TypePubsub().Build()).AsInt64()
	if err != nil || killed < 2 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want both subscribers killed", killed, err)
	}
	testsvc.WaitFor(t, 10*time.Second, "both subscribers to resubscribe", func() bool {
		subs, err := admin.Do(ctx, admin.B().PubsubNumsub().Channel("bus").Build()).AsIntMap()
		return err == nil && subs["bus"] == 2
	})
	// Units published while a subscription was down are lost (at most
	// once), so publish markers until one arrives.
	deliver := func(from Bus, to <-chan []Message) {
		t.Helper()
		for i := 0; ; i++ {
			mustPublish(t, from, msg("resumed", i))
			select {
			case <-to:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if i == 50 {
				t.Fatal("no delivery within 5s of resubscribing")
			}
		}
	}
	deliver(a, recvB)
	deliver(b, recvA)
}

// The prober's restart of a subscription (what it does when probes stop
// coming back) loses nothing but what arrives during the gap.
func TestRedisRestartedSubscriptionResumesDelivery(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	channel := prefix + "bus"
	hb, recvB := recorder(t, 1024)
	a := newRedisBus(t, ca, RedisConfig{Channel: channel, Handler: func([]Message) {}})
	b := newRedisBus(t, cb, RedisConfig{Channel: channel, Handler: hb, ProbeInterval: 50 * time.Millisecond})
	for i := range 3 {
		n := b.subscribed.Load()
		b.restartSubscription()
		testsvc.WaitFor(t, 5*time.Second, "the resubscription", func() bool { return b.subscribed.Load() > n })
		mustPublish(t, a, msg("restarted", i))
		expectUnit(t, recvB, msg("restarted", i))
	}
	if !b.Healthy() {
		t.Fatal("restarts made the bus unhealthy")
	}
}

// While Redis hangs (CLIENT PAUSE: connections open, no replies), relay
// round trips time out, the queue fills and Publish refuses with
// ErrBackpressure instead of waiting; the bus turns unhealthy and recovers
// when Redis answers again.
func TestRedisStaysBoundedWhileRedisHangs(t *testing.T) {
	srv := testsvc.StartRedis(t)
	health := make(chan bool, 16)
	hb, recvB := recorder(t, 1<<10)
	a := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{
		Channel:       "bus",
		Handler:       func([]Message) {},
		QueueSize:     8,
		ProbeInterval: 100 * time.Millisecond,
		Timeout:       200 * time.Millisecond,
		OnHealth:      func(ok bool) { health <- ok },
		OnError:       logErrors(t),
	})
	newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{Channel: "bus", Handler: hb})
	admin := testsvc.Connect(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const pause = 3 * time.Second
	if err := admin.Do(ctx, admin.B().ClientPause().Timeout(pause.Milliseconds()).All().Build()).Error(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	paused := time.Now()
	refused := 0
	for i := 0; refused == 0; i++ {
		switch err := a.Publish(context.Background(), []Message{msg("hang", i)}); {
		case errors.Is(err, ErrBackpressure):
			refused++
		case err != nil:
			t.Fatalf("Publish while Redis hangs: %v", err)
		}
		if time.Since(paused) > pause {
			t.Fatal("the queue never filled while Redis was paused")
		}
	}
	select {
	case ok := <-health:
		if ok {
			t.Fatal("OnHealth(true) while Redis hangs")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OnHealth(false) within 10s of Redis hanging")
	}
	select {
	case ok := <-health:
		if !ok {
			t.Fatal("OnHealth(false) twice in a row")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no OnHealth(true) within 15s of Redis hanging for 3s")
	}
	// Units that timed out may still reach b late (rueidis had written
	// them): skip them.
	mustPublish(t, a, msg("resumed", 0))
	for {
		if unit := receive(t, recvB); unit[0].Topic == "resumed" {
			return
		}
	}
}

func TestRedisRecoversAHandlerPanic(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	errs := make(chan error, 16)
	recv := make(chan []Message, 16)
	newRedisBus(t, client, RedisConfig{
		Channel: prefix + "bus",
		OnError: func(err error) { errs <- err },
		Handler: func(msgs []Message) {
			if msgs[0].Topic == "boom" {
				panic("handler bug")
			}
			recv <- msgs
		},
	})
	publishRaw(t, client, prefix+"bus", `{"topic":"boom","event":"e"}`)
	publishRaw(t, client, prefix+"bus", `{"topic":"after","event":"e"}`)
	expectUnit(t, recv, Message{Topic: "after", Event: "e"})
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "handler panicked") || !strings.Contains(err.Error(), "handler bug") {
			t.Fatalf("OnError got %v, want the panic", err)
		}
	default:
		t.Fatal("the panic was not reported to OnError")
	}
}

// BenchmarkRedisPublish measures units per second from one bus to another
// through the test Redis (small units, one publisher keeping up to 4096 in
// flight), and the publish→Handler latency percentiles under that load.
func BenchmarkRedisPublish(b *testing.B) {
	benchmarkDelivery(b, false)
}

// BenchmarkRedisPublishLatency measures publish→Handler latency with one
// unit in flight at a time: the floor under no load.
func BenchmarkRedisPublishLatency(b *testing.B) {
	benchmarkDelivery(b, true)
}

func benchmarkDelivery(b *testing.B, oneAtATime bool) {
	const window = 4096
	ca, prefix := testsvc.Redis(b)
	cb, _ := testsvc.Redis(b)
	channel := prefix + "bus"
	latencies := make([]time.Duration, b.N)
	var delivered atomic.Int64
	got := make(chan struct{}, 1)
	pub := newRedisBus(b, ca, RedisConfig{Channel: channel, QueueSize: 1 << 16, Handler: func([]Message) {}})
	sub := newRedisBus(b, cb, RedisConfig{Channel: channel, MaxPending: 1 << 16, Handler: func(msgs []Message) {
		sent, _ := strconv.ParseInt(string(msgs[0].Data), 10, 64)
		if i := delivered.Add(1) - 1; i < int64(len(latencies)) {
			latencies[i] = time.Duration(time.Now().UnixNano() - sent)
		}
		signal(got)
	}})
	ctx := context.Background()
	data := make([]byte, 0, 32)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		data = strconv.AppendInt(data[:0], time.Now().UnixNano(), 10)
		for {
			err := pub.Publish(ctx, []Message{{Topic: "bench", Event: "e", Data: data}})
			if err == nil {
				break
			}
			if !errors.Is(err, ErrBackpressure) {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Microsecond)
		}
		if oneAtATime {
			<-got
			continue
		}
		// A window of units in flight: publishing faster than b consumes
		// would only grow b's output buffer on the server until Redis
		// disconnects b (client-output-buffer-limit pubsub 32mb).
		for int64(i+1)-delivered.Load() > window {
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				b.Fatalf("no delivery for 10s (%d of %d delivered, %d dropped, %d lost)", delivered.Load(), i+1, sub.Dropped(), pub.Lost())
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for delivered.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	n := int(delivered.Load())
	if n < b.N {
		b.Logf("%d of %d units delivered (dropped %d, lost %d)", n, b.N, sub.Dropped(), pub.Lost())
	}
	lat := latencies[:min(n, b.N)]
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds())
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "delivered/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(0.999), "p99.9-µs")
}

// BenchmarkRedisDropEcho measures what dropping one of this instance's own
// units costs the subscriber: the prefix check onMessage does, against
// the decoding it saves.
func BenchmarkRedisDropEcho(b *testing.B) {
	r := &Redis{id: "instance-a", channel: "bus", probeChannel: "bus:probe:instance-a"}
	r.ownPrefix = envelope.Prefix(r.id)
	env, err := envelope.Encode(r.id, []Message{{Topic: "chat:room-1", Event: "created", Data: json.RawMessage(`{"id":12345,"text":"hello"}`)}}, r.opts)
	if err != nil {
		b.Fatal(err)
	}
	m := rueidis.PubSubMessage{Channel: "bus", Message: string(env)}
	b.Run("prefix", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.onMessage(m)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if id, _, err := envelope.Decode([]byte(m.Message), r.opts); err != nil || id != r.id {
				b.Fatal(id, err)
			}
		}
	})
}
