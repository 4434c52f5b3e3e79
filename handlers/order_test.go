package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// orderedGateway is a gateway whose topics "t*" are replayed in a Redis
// store of their own (so delivery goes through the ordered path), with one
// socketless subscriber of topic.
func orderedGateway(t *testing.T, size int, topic string) (*Gateway, *replay.Redis, *conn) {
	t.Helper()
	client, prefix := testsvc.Redis(t)
	store, err := replay.NewRedis(client, replay.RedisConfig{KeyPrefix: prefix, Config: replay.Config{Size: size}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.MaxBackpressure = 1 << 40
	cfg.Replay = []ReplayConfig{{Topics: "t*", Size: size, TruncationNotice: true,
		NewStore: func(replay.Config) (replay.Store, error) { return store, nil }}}
	g, _ := newTestGateway(t, cfg)
	c := newMemConn(g, false)
	g.hub.subscribe(topic, c, nil)
	return g, store, c
}

// appendEvents appends n events to the store; event i has data {"i":i}.
func appendEvents(t *testing.T, s replay.Store, topic string, n int) []bus.Message {
	t.Helper()
	var out []bus.Message
	for i := 1; i <= n; i++ {
		data := json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))
		seq, err := s.Append(context.Background(), topic, "e", data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bus.Message{Topic: topic, Event: "e", Data: data, Seq: seq})
	}
	return out
}

// stream is what c received, as "seq" per envelope ("T" for truncated).
func stream(t *testing.T, c *conn) []string {
	var out []string
	for _, b := range memFrames(c) {
		for _, f := range decodeFrame(t, b) {
			if f.Event == "truncated" {
				out = append(out, "T")
				continue
			}
			out = append(out, fmt.Sprint(f.Seq))
		}
	}
	return out
}

func waitStream(t *testing.T, c *conn, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := stream(t, c)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the subscriber got %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOrderedDeliveryFillsASkipFromTheStore(t *testing.T) {
	g, store, c := orderedGateway(t, 100, "t1")
	ev := appendEvents(t, store, "t1", 4)
	g.deliverRemote(ev[0:1])
	g.deliverRemote(ev[3:4]) // 2 and 3 were lost on the bus
	waitStream(t, c, "1", "2", "3", "4")
	g.deliverRemote(ev[1:2]) // arrives late: already delivered by the fill
	ev = appendEvents(t, store, "t1", 2)
	g.deliverRemote(ev)
	waitStream(t, c, "1", "2", "3", "4", "5", "6")
}

func TestOrderedDeliveryReportsWhatTheStoreLostAsTruncated(t *testing.T) {
	g, store, c := orderedGateway(t, 2, "t2")
	ev := appendEvents(t, store, "t2", 5) // the store keeps 4 and 5
	g.deliverRemote(ev[0:1])
	g.deliverRemote(ev[4:5])
	waitStream(t, c, "1", "T", "4", "5")
}

func TestOrderedDeliveryResyncFillsAnIdleTopic(t *testing.T) {
	g, store, c := orderedGateway(t, 100, "t3")
	ev := appendEvents(t, store, "t3", 3)
	g.deliverRemote(ev[0:1]) // 2 and 3 were published while the bus was down
	g.resync()
	waitStream(t, c, "1", "2", "3")
}

func TestMemoryBaseCountsFromOneOnlyOnTheFirstStart(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if b := memoryBase(dir, "chat", now); b != 0 {
		t.Fatalf("first start: base %d, want 0", b)
	}
	if b := memoryBase(dir, "chat", now); b != replay.ClockBase(now) || b == 0 {
		t.Fatalf("restart: base %d, want the clock base %d", b, replay.ClockBase(now))
	}
	if b := memoryBase(dir, "other", now); b != 0 {
		t.Fatalf("another gateway's first start: base %d, want 0", b)
	}
}
