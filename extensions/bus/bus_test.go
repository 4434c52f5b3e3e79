package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/caddy-realtime/realtime/internal/testsvc"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain fails the run when a goroutine of this package outlives the
// tests: every bus must stop what it started when closed (docs/design.md, conventions §5).
func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/bus.") }

// pairFactory gives the conformance suite two instances of one backend on
// one medium (a Network, a Redis server) and the Handler calls each
// receives. It closes both in t.Cleanup.
type pairFactory func(t *testing.T) (a, b Bus, recvA, recvB <-chan []Message)

// recorder returns a Handler that forwards each call to the returned
// channel without blocking; an overflow fails t.
func recorder(t testing.TB, size int) (Handler, <-chan []Message) {
	ch := make(chan []Message, size)
	return func(msgs []Message) {
		select {
		case ch <- msgs:
		default:
			t.Errorf("receiver overflow: more than %d units waiting", size)
		}
	}, ch
}

func receive(t testing.TB, ch <-chan []Message) []Message {
	t.Helper()
	select {
	case msgs := <-ch:
		return msgs
	case <-time.After(5 * time.Second):
		t.Fatal("no unit received within 5s")
		return nil
	}
}

func mustPublish(t testing.TB, b Bus, msgs ...Message) {
	t.Helper()
	if err := b.Publish(context.Background(), msgs); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// sameData compares Data as the contract does: nil and null are one value.
func sameData(a, b json.RawMessage) bool {
	if a == nil {
		a = json.RawMessage("null")
	}
	if b == nil {
		b = json.RawMessage("null")
	}
	return bytes.Equal(a, b)
}

func sameUnit(got, want []Message) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Topic != w.Topic || g.Event != w.Event || g.Seq != w.Seq || g.User != w.User || !sameData(g.Data, w.Data) {
			return false
		}
	}
	return true
}

func unitString(msgs []Message) string {
	var sb strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&sb, "{%q %q %s seq=%d user=%q}", m.Topic, m.Event, m.Data, m.Seq, m.User)
	}
	return sb.String()
}

func expectUnit(t testing.TB, ch <-chan []Message, want ...Message) {
	t.Helper()
	if got := receive(t, ch); !sameUnit(got, want) {
		t.Fatalf("received %s, want %s", unitString(got), unitString(want))
	}
}

func msg(topic string, n int) Message {
	return Message{Topic: topic, Event: "e", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}
}

// testBus is the conformance suite every backend runs (docs/design.md, conventions §7).
func testBus(t *testing.T, newPair pairFactory) {
	t.Run("units from one publisher arrive in publish order", func(t *testing.T) {
		a, b, recvA, recvB := newPair(t)
		const n = 300
		var wg sync.WaitGroup
		defer wg.Wait() // even after a failure: publishers may call t.Errorf
		for _, p := range []Bus{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n {
					if err := p.Publish(context.Background(), []Message{msg("order", i)}); err != nil {
						t.Errorf("Publish: %v", err)
						return
					}
				}
			}()
		}
		for i := range n {
			expectUnit(t, recvB, msg("order", i))
			expectUnit(t, recvA, msg("order", i))
		}
	})

	t.Run("a batch arrives in one call with its order and fields", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		batch := []Message{
			{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1}`), Seq: 7},
			{Topic: "feed:a/b", Event: "x"},
			{Topic: "dm", Event: "new", Data: json.RawMessage(`"hi"`), User: "u9"},
			{Topic: "chat", Event: "updated", Data: json.RawMessage(`[1,2]`), Seq: 8},
		}
		mustPublish(t, a, batch...)
		expectUnit(t, recvB, batch...)
	})

	t.Run("the publisher never receives its own units", func(t *testing.T) {
		a, b, recvA, recvB := newPair(t)
		// Causal chain: b publishes only after receiving a's unit, so an
		// echo of a's unit would reach a before b's.
		mustPublish(t, a, msg("echo", 1))
		expectUnit(t, recvB, msg("echo", 1))
		mustPublish(t, b, msg("echo", 2))
		expectUnit(t, recvA, msg("echo", 2))
		mustPublish(t, a, msg("echo", 3))
		expectUnit(t, recvB, msg("echo", 3))
	})

	t.Run("data bytes pass through unchanged", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		for _, d := range []string{
			`{"b":1,"a":2}`,
			`{ "spaced" : [ 1 , 2 ] }`,
			`9007199254740993`,
			`1.10e400`,
			`-0.0`,
			`"\u00e9\ud83d\ude00 é 😀 \u2028"`,
			`"<script>&amp;"`,
			`[]`,
			`{}`,
			`null`,
			`true`,
			`{"deep":[[[[[[[[[[{"x":"y"}]]]]]]]]]]}`,
			`"` + strings.Repeat("x", 512<<10) + `"`,
		} {
			m := Message{Topic: "data", Event: "e", Data: json.RawMessage(d)}
			mustPublish(t, a, m)
			got := receive(t, recvB)
			if len(got) != 1 || !bytes.Equal(got[0].Data, m.Data) {
				t.Fatalf("data %.40q came back as %.40q", d, got[0].Data)
			}
		}
		mustPublish(t, a, Message{Topic: "data", Event: "nil"})
		expectUnit(t, recvB, Message{Topic: "data", Event: "nil"})
	})

	t.Run("Publish keeps no reference to the caller's messages", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		data := []byte(`{"v":"original"}`)
		msgs := []Message{{Topic: "reuse", Event: "e", Data: data}}
		mustPublish(t, a, msgs...)
		copy(data, `{"v":"CLOBBERED"}`)
		msgs[0].Topic = "changed"
		expectUnit(t, recvB, Message{Topic: "reuse", Event: "e", Data: json.RawMessage(`{"v":"original"}`)})
	})

	t.Run("concurrent publishers keep each one's order", func(t *testing.T) {
		a, b, recvA, recvB := newPair(t)
		const workers, n = 8, 100
		var wg sync.WaitGroup
		defer wg.Wait()
		for w := range workers {
			for _, p := range []Bus{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range n {
						m := Message{Topic: "conc", Event: "e", Data: json.RawMessage(fmt.Sprintf(`[%d,%d]`, w, i))}
						if err := p.Publish(context.Background(), []Message{m, m}); err != nil {
							t.Errorf("Publish: %v", err)
							return
						}
					}
				}()
			}
		}
		check := func(name string, ch <-chan []Message) {
			next := make([]int, workers)
			for range workers * n {
				unit := receive(t, ch)
				if len(unit) != 2 || !bytes.Equal(unit[0].Data, unit[1].Data) {
					t.Fatalf("%s: unit split or mixed: %s", name, unitString(unit))
				}
				var wi [2]int
				if err := json.Unmarshal(unit[0].Data, &wi); err != nil {
					t.Fatalf("%s: data %s: %v", name, unit[0].Data, err)
				}
				if wi[1] != next[wi[0]] {
					t.Fatalf("%s: worker %d: got unit %d, want %d", name, wi[0], wi[1], next[wi[0]])
				}
				next[wi[0]]++
			}
		}
		check("a", recvA)
		check("b", recvB)
	})

	t.Run("an invalid unit is refused whole", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		ok := msg("valid", 0)
		for _, tc := range []struct {
			name string
			bad  Message
		}{
			{"empty topic", Message{Event: "e"}},
			{"topic with a quote", Message{Topic: `a"b`, Event: "e"}},
			{"topic with a control character", Message{Topic: "a\nb", Event: "e"}},
			{"topic longer than 256", Message{Topic: strings.Repeat("t", 257), Event: "e"}},
			{"empty event", Message{Topic: "t"}},
			{"event with a backslash", Message{Topic: "t", Event: `a\b`}},
			{"data that is not JSON", Message{Topic: "t", Event: "e", Data: json.RawMessage(`{"a":`)}},
			{"data with invalid UTF-8", Message{Topic: "t", Event: "e", Data: json.RawMessage("\"\xff\"")}},
			{"seq on a system topic", Message{Topic: "__group:x", Event: "e", Seq: 1}},
			{"seq on a direct send", Message{Topic: "t", Event: "e", Seq: 1, User: "u"}},
			{"seq beyond 2^53", Message{Topic: "t", Event: "e", Seq: 1<<53 + 1}},
			{"user with invalid UTF-8", Message{Topic: "t", Event: "e", User: "\xff"}},
		} {
			err := a.Publish(context.Background(), []Message{ok, tc.bad})
			if !errors.Is(err, ErrInvalidMessage) {
				t.Errorf("%s: Publish returned %v, want ErrInvalidMessage", tc.name, err)
			}
		}
		mustPublish(t, a, msg("after", 1))
		expectUnit(t, recvB, msg("after", 1))
	})

	t.Run("publishing nothing relays nothing", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		mustPublish(t, a)
		mustPublish(t, a, msg("after", 1))
		expectUnit(t, recvB, msg("after", 1))
	})

	t.Run("a done context is refused", func(t *testing.T) {
		a, _, _, recvB := newPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := a.Publish(ctx, []Message{msg("canceled", 0)}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish with a canceled ctx returned %v, want context.Canceled", err)
		}
		mustPublish(t, a, msg("after", 1))
		expectUnit(t, recvB, msg("after", 1))
	})

	t.Run("Publish after Close returns ErrClosed", func(t *testing.T) {
		a, b, _, _ := newPair(t)
		c, ok := a.(Closer)
		if !ok {
			t.Fatalf("%T does not implement Closer", a)
		}
		if err := c.Close(context.Background()); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := a.Publish(context.Background(), []Message{msg("closed", 0)}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Close returned %v, want ErrClosed", err)
		}
		if err := c.Close(context.Background()); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if h, ok := a.(Healther); ok && h.Healthy() {
			t.Error("Healthy after Close")
		}
		// The other instance goes on publishing to nobody.
		mustPublish(t, b, msg("alone", 0))
	})
}

// newMemoryPair puts two Memory buses on a fresh Network.
func newMemoryPair(t *testing.T) (a, b Bus, recvA, recvB <-chan []Message) {
	var net Network
	ha, recvA := recorder(t, 1<<14)
	hb, recvB := recorder(t, 1<<14)
	ma := NewMemory(MemoryConfig{Network: &net, Handler: ha})
	mb := NewMemory(MemoryConfig{Network: &net, Handler: hb})
	t.Cleanup(func() { mustClose(t, ma, mb) })
	return ma, mb, recvA, recvB
}

func mustClose(t testing.TB, cs ...Closer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range cs {
		if err := c.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

func TestMemory(t *testing.T) {
	testBus(t, newMemoryPair)
}
