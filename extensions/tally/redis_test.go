package tally

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/tally.") }

// newTally starts a Redis tally whose handler answers count (or panics
// when count is negative) and records what it was asked.
func newTally(t *testing.T, client rueidis.Client, prefix, id string, count int, got chan<- envelope.Message) *Redis {
	t.Helper()
	r, err := NewRedis(client, RedisConfig{KeyPrefix: prefix, InstanceID: id, Handler: func(m envelope.Message) int {
		if got != nil {
			got <- m
		}
		if count < 0 {
			panic("handler failure")
		}
		return count
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return r
}

func numsub(t *testing.T, c rueidis.Client, channel string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subs, err := c.Do(ctx, c.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
	if err != nil {
		t.Fatal(err)
	}
	return subs[channel]
}

func ask(t *testing.T, r *Redis, m envelope.Message, wait time.Duration) Answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	a, err := r.Ask(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Ask reaches every other instance's handler once, not the asker's, and
// returns the sum of their counts as soon as all of them answered; a
// handler that panics answers 0.
func TestRedisAskSumsEveryOtherInstance(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	gotB, gotC := make(chan envelope.Message, 4), make(chan envelope.Message, 4)
	a := newTally(t, client, prefix, "a", 100, nil)
	newTally(t, client, prefix, "b", 2, gotB)
	newTally(t, client, prefix, "c", 3, gotC)
	newTally(t, client, prefix, "d", -1, nil)
	testsvc.WaitFor(t, 5*time.Second, "four subscriptions", func() bool { return numsub(t, client, prefix+"rt:tally::ask") == 4 })
	testsvc.WaitFor(t, 5*time.Second, "a's subscription confirmed", a.subscribed.Load)

	m := envelope.Message{Topic: "dm:u1", Event: "new", Data: json.RawMessage(`{"n":1}`), User: "u1"}
	// A long wait: Ask must return when the answers are in, not at the deadline.
	start := time.Now()
	got := ask(t, a, m, time.Minute)
	if got != (Answer{Delivered: 5, Answered: 3, Reached: 3}) || got.Partial() {
		t.Fatalf("answer %+v, want 5 delivered by the 3 other instances", got)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Ask took %s: it waited for its deadline", d)
	}
	for _, ch := range []chan envelope.Message{gotB, gotC} {
		select {
		case g := <-ch:
			if g.Topic != m.Topic || g.Event != m.Event || string(g.Data) != string(m.Data) || g.User != m.User {
				t.Fatalf("handler got %+v, want %+v", g, m)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("an instance's handler was not called")
		}
	}
	select {
	case g := <-gotB:
		t.Fatalf("handler called twice: %+v", g)
	default:
	}
}

// An instance that receives the message and does not answer (here a
// subscriber that is no tally) is waited for until Ask's ctx ends; the
// answer counts the others and is partial. Forged and repeated answers
// count once per instance.
func TestRedisAskWithoutAnswerIsPartial(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	a := newTally(t, client, prefix, "a", 0, nil)
	newTally(t, client, prefix, "b", 1, nil)
	mute := testsvc.Connect(t, testsvc.RedisAddr())
	forger := testsvc.Connect(t, testsvc.RedisAddr())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var forged atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		// It answers every message twice as "b" with a count of 50, then as
		// itself with a malformed count.
		_ = mute.Receive(ctx, mute.B().Subscribe().Channel(prefix+"rt:tally::ask").Build(), func(m rueidis.PubSubMessage) {
			id := m.Message[:len(m.Message)-len(m.Message[indexSpace(m.Message):])]
			for _, answer := range []string{id + " 50 b", id + " 50 b", id + " x mute", "garbage"} {
				c, cl := context.WithTimeout(context.Background(), time.Second)
				_ = forger.Do(c, forger.B().Publish().Channel(prefix+"rt:tally::answer:a").Message(answer).Build()).Error()
				cl()
			}
			forged.Add(1)
		})
	}()
	testsvc.WaitFor(t, 5*time.Second, "three subscriptions", func() bool { return numsub(t, client, prefix+"rt:tally::ask") == 3 })
	testsvc.WaitFor(t, 5*time.Second, "a's subscription confirmed", a.subscribed.Load)

	start := time.Now()
	got := ask(t, a, envelope.Message{Topic: "dm:u1", Event: "e", User: "u1"}, 300*time.Millisecond)
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("Ask returned after %s, before its deadline, with an instance still to answer", d)
	}
	if got.Reached != 2 || got.Answered != 1 || !got.Partial() {
		t.Fatalf("answer %+v, want 1 of the 2 other instances answered, partial", got)
	}
	if got.Delivered != 1 && got.Delivered != 50 {
		t.Fatalf("delivered %d: an instance counted twice", got.Delivered)
	}
	if forged.Load() == 0 {
		t.Fatal("the mute subscriber received nothing")
	}
	cancel()
	<-done
}

func indexSpace(s string) int {
	for i := range s {
		if s[i] == ' ' {
			return i
		}
	}
	return len(s)
}

// A message that breaks the envelope rules is refused before anything is
// sent; Ask after Close fails with ErrClosed; an asked envelope claiming
// the asker's own id is not delivered.
func TestRedisAskRefusals(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	got := make(chan envelope.Message, 4)
	a := newTally(t, client, prefix, "a", 1, got)
	testsvc.WaitFor(t, 5*time.Second, "a's subscription confirmed", a.subscribed.Load)
	if _, err := a.Ask(context.Background(), envelope.Message{Topic: "__presence:x", Event: "e", User: "u"}); !errors.Is(err, envelope.ErrInvalidMessage) {
		t.Fatalf("a system topic not allowed: %v, want ErrInvalidMessage", err)
	}
	env, err := envelope.Encode("a", []envelope.Message{{Topic: "dm", Event: "e", User: "u"}}, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := client.Do(ctx, client.B().Publish().Channel(prefix+"rt:tally::ask").Message("7 "+string(env)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// A message from another id after it proves the first was processed.
	env2, _ := envelope.Encode("z", []envelope.Message{{Topic: "dm", Event: "e2", User: "u"}}, envelope.Options{})
	if err := client.Do(ctx, client.B().Publish().Channel(prefix+"rt:tally::ask").Message(strconv.Itoa(8)+" "+string(env2)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Event != "e2" {
			t.Fatalf("delivered %+v, an envelope with the tally's own id", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the other instance's message was not delivered")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Ask(context.Background(), envelope.Message{Topic: "dm", Event: "e", User: "u"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ask after Close: %v, want ErrClosed", err)
	}
}

// On a Redis Cluster the channels are shard channels: SPUBLISH counts
// every instance subscribed, on whichever master serves the ask
// channel's slot, and the answers come back on theirs.
func TestRedisAskOnRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster of 6 nodes")
	}
	cl := testsvc.StartCluster(t)
	var tallies []*Redis
	for i, count := range []int{0, 2, 3} {
		c := cl.Client(t)
		if c.Mode() != rueidis.ClientModeCluster {
			t.Fatalf("client mode %v, want cluster", c.Mode())
		}
		tallies = append(tallies, newTally(t, c, "c:", strconv.Itoa(i), count, nil))
	}
	for _, r := range tallies {
		testsvc.WaitFor(t, 10*time.Second, "every shard subscription", r.subscribed.Load)
	}
	var got Answer
	// The answer channels' subscriptions may confirm after the ask
	// channel's: ask until both instances answered.
	testsvc.WaitFor(t, 10*time.Second, "both answers", func() bool {
		got = ask(t, tallies[0], envelope.Message{Topic: "dm:u1", Event: "e", User: "u1"}, time.Second)
		return got.Answered == 2
	})
	if got != (Answer{Delivered: 5, Answered: 2, Reached: 2}) {
		t.Fatalf("answer %+v, want 5 delivered by the 2 other instances", got)
	}
}
