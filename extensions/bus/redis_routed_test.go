package bus

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/wire"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func waitReady(t *testing.T, ready <-chan struct{}) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("subscription not confirmed within 5s")
	}
}

func numsub(t *testing.T, c rueidis.Client, channel string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subs, err := c.Do(ctx, c.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return subs[channel]
}

// A routed bus receives the units of the topics it holds, from the moment
// Hold's channel is closed, and none of the others; direct sends reach
// every instance.
func TestRedisRoutedDeliversOnlyHeldTopics(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	ha, _ := recorder(t, 1024)
	hb, recvB := recorder(t, 1024)
	rt := &Routing{Prefix: prefix, Linger: 100 * time.Millisecond}
	a := newRedisBus(t, ca, RedisConfig{Routing: rt, Handler: ha, OnError: logErrors(t)})
	b := newRedisBus(t, cb, RedisConfig{Routing: rt, Handler: hb, OnError: logErrors(t)})

	waitReady(t, b.Hold("held"))
	mustPublish(t, a, msg("other", 1))
	mustPublish(t, a, msg("held", 2))
	expectUnit(t, recvB, msg("held", 2))

	// A batch over a held and an unheld topic arrives split: the held
	// topic's part only.
	mustPublish(t, a, msg("other", 3), msg("held", 4), msg("held", 5))
	expectUnit(t, recvB, msg("held", 4), msg("held", 5))

	direct := Message{Topic: "dm", Event: "e", Data: json.RawMessage(`1`), User: "u1"}
	mustPublish(t, a, direct)
	expectUnit(t, recvB, direct)

	// Released, the channel lingers, then is unsubscribed.
	ch := rt.TopicChannel("held")
	if n := numsub(t, ca, ch); n != 1 {
		t.Fatalf("NUMSUB %s = %d, want 1", ch, n)
	}
	b.Release("held")
	testsvc.WaitFor(t, 5*time.Second, "the channel unsubscribed after the linger", func() bool { return numsub(t, ca, ch) == 0 })
	if n := b.Subscriptions(); n != 0 {
		t.Fatalf("Subscriptions = %d after the linger, want 0", n)
	}
	mustPublish(t, a, msg("held", 6))
	mustPublish(t, a, direct)
	expectUnit(t, recvB, direct) // the unit on the dropped channel did not come first
}

// A hold released and taken again within the linger keeps the one
// subscription: no UNSUBSCRIBE, the channel is ready at once.
func TestRedisRoutedLingerKeepsTheSubscription(t *testing.T) {
	c, prefix := testsvc.Redis(t)
	h, _ := recorder(t, 16)
	rt := &Routing{Prefix: prefix, Linger: time.Hour}
	b := newRedisBus(t, c, RedisConfig{Routing: rt, Handler: h})
	waitReady(t, b.Hold("t"))
	b.Release("t")
	select {
	case <-b.Hold("t"):
	default:
		t.Fatal("a channel held again within its linger is not ready at once")
	}
	if n := numsub(t, c, rt.TopicChannel("t")); n != 1 {
		t.Fatalf("NUMSUB = %d, want 1", n)
	}
}

// Partitions put topics on a bounded set of channels: a holder of one
// topic receives its partition's other topics too.
func TestRedisRoutedPartitions(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	hb, recvB := recorder(t, 1024)
	rt := &Routing{Prefix: prefix, Partitions: 4}
	a := newRedisBus(t, ca, RedisConfig{Routing: rt, Handler: func([]Message) {}})
	b := newRedisBus(t, cb, RedisConfig{Routing: rt, Handler: hb})
	var same, other string
	for i := 0; same == "" || other == ""; i++ {
		name := "t" + string(rune('a'+i))
		switch {
		case name == "ta":
		case rt.TopicChannel(name) == rt.TopicChannel("ta"):
			same = name
		default:
			other = name
		}
	}
	waitReady(t, b.Hold("ta"))
	mustPublish(t, a, msg(other, 1))
	mustPublish(t, a, msg(same, 2))
	expectUnit(t, recvB, msg(same, 2))
}

// After the subscriber's connection is killed, every held channel is
// subscribed again, and OnResync is called once the direct channel, sent
// last, is confirmed.
func TestRedisRoutedResubscribesAfterClientKill(t *testing.T) {
	srv := testsvc.StartRedis(t)
	hb, recvB := recorder(t, 1024)
	var resyncs atomic.Int32
	rt := &Routing{}
	a := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{Routing: rt, Handler: func([]Message) {}})
	b := newRedisBus(t, testsvc.Connect(t, srv.Addr()), RedisConfig{Routing: rt, Handler: hb, OnError: logErrors(t),
		OnResync: func() { resyncs.Add(1) }})
	topics := []string{"k1", "k2", "k3"}
	for _, tp := range topics {
		waitReady(t, b.Hold(tp))
	}
	admin := testsvc.Connect(t, srv.Addr())
	before := resyncs.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if killed, err := admin.Do(ctx, admin.B().ClientKill().TypePubsub().Build()).AsInt64(); err != nil || killed < 2 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v", killed, err)
	}
	testsvc.WaitFor(t, 10*time.Second, "OnResync after the reconnection", func() bool { return resyncs.Load() > before })
	for _, tp := range topics {
		if n := numsub(t, admin, rt.TopicChannel(tp)); n != 1 {
			t.Fatalf("NUMSUB %s = %d after the reconnection, want 1", tp, n)
		}
	}
	mustPublish(t, a, msg("k2", 1))
	expectUnit(t, recvB, msg("k2", 1))
}

// In compat mode with a gateway channel, a node of the reference package
// (a plain subscriber of the one channel) receives the topic publishes and
// none of the gateways' own units, which the other gateway still gets.
func TestRedisGatewayChannelKeepsGatewayTrafficOffTheSharedChannel(t *testing.T) {
	ca, prefix := testsvc.Redis(t)
	cb, _ := testsvc.Redis(t)
	channel, gw := prefix+"bus", prefix+"rt:bus:gateway"
	hb, recvB := recorder(t, 1024)
	opts := EnvelopeOptions{SystemTopics: wire.Patterns{"__cursor:*", "__group:*"}}
	a := newRedisBus(t, ca, RedisConfig{Channel: channel, GatewayChannel: gw, Handler: func([]Message) {}, EnvelopeOptions: opts})
	newRedisBus(t, cb, RedisConfig{Channel: channel, GatewayChannel: gw, Handler: hb, EnvelopeOptions: opts})

	node, _ := testsvc.Redis(t)
	nodeGot := make(chan string, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subscribed := make(chan struct{})
	var once sync.Once
	go func() {
		_ = node.Receive(rueidis.WithOnSubscriptionHook(ctx, func(rueidis.PubSubSubscription) { once.Do(func() { close(subscribed) }) }),
			node.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) { nodeGot <- m.Message })
	}()
	<-subscribed

	direct := Message{Topic: "dm", Event: "e", Data: json.RawMessage(`1`), User: "u1"}
	cursorFrame := Message{Topic: "__cursor:doc", Event: "update", Data: json.RawMessage(`{"key":"k"}`)}
	mustPublish(t, a, direct)
	mustPublish(t, a, cursorFrame)
	mustPublish(t, a, msg("chat", 1), direct)
	expectUnit(t, recvB, direct)
	expectUnit(t, recvB, cursorFrame)
	expectUnit(t, recvB, msg("chat", 1))
	expectUnit(t, recvB, direct)
	select {
	case got := <-nodeGot:
		if got != `{"instanceId":"`+a.id+`","topic":"chat","event":"e","data":{"n":1}}` {
			t.Fatalf("the node received %s, want only the chat publish", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the node received nothing")
	}
	select {
	case got := <-nodeGot:
		t.Fatalf("the node received gateway traffic: %s", got)
	case <-time.After(200 * time.Millisecond):
	}
}
