package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            Config
		ttl, interval time.Duration
	}{
		{"the zero Config gets docs/protocol.md's defaults", Config{}, 90 * time.Second, 30 * time.Second},
		{"a short TTL shortens the default heartbeat to a third of it", Config{TTL: 15 * time.Second}, 15 * time.Second, 5 * time.Second},
		{"a long TTL keeps the default heartbeat", Config{TTL: 10 * time.Minute}, 10 * time.Minute, 30 * time.Second},
		{"a set heartbeat is kept", Config{Refresh: time.Second}, 90 * time.Second, time.Second},
		{"negative durations count as unset", Config{TTL: -1, Refresh: -1}, 90 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.TTL != tc.ttl || got.Refresh != tc.interval || got.Now == nil {
				t.Fatalf("got TTL %v, Refresh %v, Now set %v; want %v, %v, true", got.TTL, got.Refresh, got.Now != nil, tc.ttl, tc.interval)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{NoChange: "no change", Joined: "joined", Updated: "updated", Left: "left", Kind(9): "unknown"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

// trackerFactory returns a fresh Tracker of one backend, configured with
// cfg, whose topics no other test sees (a unique key prefix for Redis). It
// releases the Tracker in t.Cleanup.
type trackerFactory func(t *testing.T, cfg Config) Tracker

func mustJoin(t testing.TB, tr Tracker, topic, key, connID, data string) Change {
	t.Helper()
	c, err := tr.Join(context.Background(), topic, key, connID, rawOrNil(data))
	if err != nil {
		t.Fatalf("Join(%q, %q, %q): %v", topic, key, connID, err)
	}
	return c
}

func mustLeave(t testing.TB, tr Tracker, topic, key, connID string) Change {
	t.Helper()
	c, err := tr.Leave(context.Background(), topic, key, connID)
	if err != nil {
		t.Fatalf("Leave(%q, %q, %q): %v", topic, key, connID, err)
	}
	return c
}

// rawOrNil turns "" into nil data, the contract's null.
func rawOrNil(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

// expectChange fails t unless got is the change of kind to key on topic.
// data is the member's data after the change; "" skips that check (a
// NoChange for an unknown key has no data to compare).
func expectChange(t testing.TB, got Change, kind Kind, topic, key, data string) {
	t.Helper()
	if got.Kind != kind || got.Topic != topic || got.Member.Key != key || (data != "" && string(got.Member.Data) != data) {
		t.Fatalf("got %v of %q on %q with data %s; want %v of %q on %q with data %s",
			got.Kind, got.Member.Key, got.Topic, got.Member.Data, kind, key, topic, data)
	}
}

// present returns topic's members as key → data, checking that List has no
// duplicate key and that Count agrees with it.
func present(t testing.TB, tr Tracker, topic string) map[string]string {
	t.Helper()
	list, err := tr.List(context.Background(), topic)
	if err != nil {
		t.Fatalf("List(%q): %v", topic, err)
	}
	out := make(map[string]string, len(list))
	for _, m := range list {
		if _, dup := out[m.Key]; dup {
			t.Fatalf("List(%q) returned key %q twice", topic, m.Key)
		}
		out[m.Key] = string(m.Data)
	}
	n, err := tr.Count(context.Background(), topic)
	if err != nil {
		t.Fatalf("Count(%q): %v", topic, err)
	}
	if n != len(out) {
		t.Fatalf("Count(%q) = %d, but List returned %d members", topic, n, len(out))
	}
	return out
}

func expectPresent(t testing.TB, tr Tracker, topic string, want map[string]string) {
	t.Helper()
	got := present(t, tr, topic)
	if len(got) != len(want) {
		t.Fatalf("topic %q has members %v, want %v", topic, got, want)
	}
	for k, v := range want {
		if d, ok := got[k]; !ok || d != v {
			t.Fatalf("topic %q has members %v, want %v", topic, got, want)
		}
	}
}

// testTracker is the conformance suite every backend runs (docs/design.md, conventions §7).
func testTracker(t *testing.T, newTracker trackerFactory) {
	const ann, bo = `{"id":"u1","name":"Ann"}`, `{"id":"u2","name":"Bo"}`
	const ann2 = `{"id":"u1","name":"Ann B."}`

	t.Run("the first connection of a key joins", func(t *testing.T) {
		tr := newTracker(t, Config{})
		expectChange(t, mustJoin(t, tr, "room", "u1", "c1", ann), Joined, "room", "u1", ann)
		expectPresent(t, tr, "room", map[string]string{"u1": ann})
	})

	t.Run("a second connection with the same data changes nothing", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustJoin(t, tr, "room", "u1", "c1", ann)
		expectChange(t, mustJoin(t, tr, "room", "u1", "c2", ann), NoChange, "room", "u1", ann)
		expectPresent(t, tr, "room", map[string]string{"u1": ann})
	})

	t.Run("a second connection with other data updates the member", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustJoin(t, tr, "room", "u1", "c1", ann)
		expectChange(t, mustJoin(t, tr, "room", "u1", "c2", ann2), Updated, "room", "u1", ann2)
		expectPresent(t, tr, "room", map[string]string{"u1": ann2})
	})

	t.Run("joining again with the same connection only updates the data", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustJoin(t, tr, "room", "u1", "c1", ann)
		expectChange(t, mustJoin(t, tr, "room", "u1", "c1", ann), NoChange, "room", "u1", ann)
		expectChange(t, mustJoin(t, tr, "room", "u1", "c1", ann2), Updated, "room", "u1", ann2)
		// Still one connection: its single leave is the last.
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), Left, "room", "u1", ann2)
		expectPresent(t, tr, "room", nil)
	})

	t.Run("leaving one of two connections changes nothing", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustJoin(t, tr, "room", "u1", "c1", ann)
		mustJoin(t, tr, "room", "u1", "c2", ann)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), NoChange, "room", "u1", ann)
		expectPresent(t, tr, "room", map[string]string{"u1": ann})
	})

	t.Run("the last leave reports Left with the last data", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustJoin(t, tr, "room", "u1", "c1", ann)
		mustJoin(t, tr, "room", "u1", "c2", ann2)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c2"), NoChange, "room", "u1", ann2)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), Left, "room", "u1", ann2)
		expectPresent(t, tr, "room", nil)
		// The key is gone: its next connection is a first join again.
		expectChange(t, mustJoin(t, tr, "room", "u1", "c3", ann), Joined, "room", "u1", ann)
	})

	t.Run("leaving with an unknown connection changes nothing", func(t *testing.T) {
		tr := newTracker(t, Config{})
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), NoChange, "room", "u1", "")
		mustJoin(t, tr, "room", "u1", "c1", ann)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c9"), NoChange, "room", "u1", "")
		expectChange(t, mustLeave(t, tr, "room", "u2", "c1"), NoChange, "room", "u2", "")
		expectChange(t, mustLeave(t, tr, "hall", "u1", "c1"), NoChange, "hall", "u1", "")
		expectPresent(t, tr, "room", map[string]string{"u1": ann})
		// A leave repeated after the last one changes nothing either.
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), Left, "room", "u1", ann)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), NoChange, "room", "u1", "")
	})

	t.Run("List and Count count each key once", func(t *testing.T) {
		tr := newTracker(t, Config{})
		expectPresent(t, tr, "room", nil)
		mustJoin(t, tr, "room", "u1", "c1", ann)
		mustJoin(t, tr, "room", "u1", "c2", ann)
		mustJoin(t, tr, "room", "u2", "c3", bo)
		mustJoin(t, tr, "room", "__conn:c4", "c4", `{}`)
		expectPresent(t, tr, "room", map[string]string{"u1": ann, "u2": bo, "__conn:c4": `{}`})
	})

	t.Run("topics are isolated", func(t *testing.T) {
		tr := newTracker(t, Config{})
		expectChange(t, mustJoin(t, tr, "room", "u1", "c1", ann), Joined, "room", "u1", ann)
		expectChange(t, mustJoin(t, tr, "hall", "u1", "c1", ann2), Joined, "hall", "u1", ann2)
		mustJoin(t, tr, "hall", "u2", "c2", bo)
		expectChange(t, mustLeave(t, tr, "room", "u1", "c1"), Left, "room", "u1", ann)
		expectPresent(t, tr, "room", nil)
		expectPresent(t, tr, "hall", map[string]string{"u1": ann2, "u2": bo})
	})

	t.Run("data is kept byte for byte and copied from the caller", func(t *testing.T) {
		tr := newTracker(t, Config{})
		// Spacing, key order and a number beyond float64 precision survive.
		odd := `{ "z":1,"a" : [ ], "n":9007199254740993 }`
		buf := []byte(odd)
		if _, err := tr.Join(context.Background(), "room", "u1", "c1", buf); err != nil {
			t.Fatal(err)
		}
		copy(buf, "XXXXXXXX")
		expectPresent(t, tr, "room", map[string]string{"u1": odd})
		expectChange(t, mustJoin(t, tr, "room", "u1", "c2", odd), NoChange, "room", "u1", odd)
	})

	t.Run("a done context records nothing", func(t *testing.T) {
		tr := newTracker(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := tr.Join(ctx, "room", "u1", "c1", json.RawMessage(ann)); err == nil {
			t.Fatal("Join with a canceled context returned no error")
		}
		expectPresent(t, tr, "room", nil)
	})

	t.Run("concurrent connections of one key join once and leave once", func(t *testing.T) {
		tr := newTracker(t, Config{})
		const n = 64
		var joins, leaves [4]atomic.Int32 // per Kind
		var joined sync.WaitGroup
		joined.Add(n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				conn := fmt.Sprintf("c%d", i)
				<-start
				c, err := tr.Join(context.Background(), "room", "u1", conn, json.RawMessage(ann))
				joined.Done()
				if err != nil {
					t.Errorf("Join: %v", err)
					return
				}
				joins[c.Kind].Add(1)
				// Every connection joins before any leaves, so the key is
				// present all along: exactly one first join, one last leave.
				joined.Wait()
				c, err = tr.Leave(context.Background(), "room", "u1", conn)
				if err != nil {
					t.Errorf("Leave: %v", err)
					return
				}
				leaves[c.Kind].Add(1)
			})
		}
		close(start)
		wg.Wait()
		if j, nc, u := joins[Joined].Load(), joins[NoChange].Load(), joins[Updated].Load(); j != 1 || nc != n-1 || u != 0 {
			t.Errorf("joins: %d Joined, %d NoChange, %d Updated; want 1, %d, 0", j, nc, u, n-1)
		}
		if l, nc := leaves[Left].Load(), leaves[NoChange].Load(); l != 1 || nc != n-1 {
			t.Errorf("leaves: %d Left, %d NoChange; want 1, %d", l, nc, n-1)
		}
		expectPresent(t, tr, "room", nil)
	})

	t.Run("concurrent first joins with different data join once", func(t *testing.T) {
		tr := newTracker(t, Config{})
		const n = 32
		var kinds [4]atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				c, err := tr.Join(context.Background(), "room", "u1", fmt.Sprintf("c%d", i), json.RawMessage(fmt.Sprintf(`{"tab":%d}`, i)))
				if err != nil {
					t.Errorf("Join: %v", err)
					return
				}
				kinds[c.Kind].Add(1)
			})
		}
		close(start)
		wg.Wait()
		if j, l := kinds[Joined].Load(), kinds[Left].Load(); j != 1 || l != 0 {
			t.Errorf("%d Joined and %d Left among %d concurrent joins; want 1 and 0", j, l, n)
		}
		got := present(t, tr, "room")
		if d, ok := got["u1"]; len(got) != 1 || !ok || !strings.HasPrefix(d, `{"tab":`) {
			t.Errorf("members %v, want u1 alone with the data of one of its joins", got)
		}
	})

	t.Run("interleaved joins and leaves of one key stay balanced", func(t *testing.T) {
		tr := newTracker(t, Config{})
		const workers, rounds = 16, 50
		var joinedN, leftN atomic.Int32
		var wg sync.WaitGroup
		for i := range workers {
			wg.Go(func() {
				conn := fmt.Sprintf("c%d", i)
				for range rounds {
					c, err := tr.Join(context.Background(), "room", "u1", conn, json.RawMessage(ann))
					if err != nil {
						t.Errorf("Join: %v", err)
						return
					}
					if c.Kind == Joined {
						joinedN.Add(1)
					}
					if c, err = tr.Leave(context.Background(), "room", "u1", conn); err != nil {
						t.Errorf("Leave: %v", err)
						return
					}
					if c.Kind == Left {
						leftN.Add(1)
					}
				}
			})
		}
		wg.Wait()
		// Each Joined opens a presence period that exactly one Left closes.
		if j, l := joinedN.Load(), leftN.Load(); j != l || j < 1 {
			t.Errorf("%d Joined and %d Left; want as many of each, at least one", j, l)
		}
		expectPresent(t, tr, "room", nil)
	})

	t.Run("a mass leave of 10 000 members empties the topic", func(t *testing.T) {
		// Leave is O(1) in the topic's size by design (no scan of the
		// topic, docs/design.md, lesson L-29); this only checks the outcome at
		// a size where a scan per leave would be obvious in the run time.
		tr := newTracker(t, Config{})
		const n, workers = 10_000, 8
		forEach := func(do func(i int)) {
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := w; i < n; i += workers {
						do(i)
					}
				})
			}
			wg.Wait()
		}
		forEach(func(i int) {
			key := fmt.Sprintf("u%d", i)
			if c, err := tr.Join(context.Background(), "big", key, "c"+key, json.RawMessage(`{}`)); err != nil || c.Kind != Joined {
				t.Errorf("join %d: %v, %v; want joined", i, c.Kind, err)
			}
		})
		if got, err := tr.Count(context.Background(), "big"); err != nil || got != n {
			t.Fatalf("Count = %d, %v; want %d", got, err, n)
		}
		forEach(func(i int) {
			key := fmt.Sprintf("u%d", i)
			if c, err := tr.Leave(context.Background(), "big", key, "c"+key); err != nil || c.Kind != Left {
				t.Errorf("leave %d: %v, %v; want left", i, c.Kind, err)
			}
		})
		expectPresent(t, tr, "big", nil)
	})
}
