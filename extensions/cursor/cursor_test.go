package cursor

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            Config
		throttle, ttl time.Duration
	}{
		{"the zero Config gets docs/protocol.md's defaults", Config{}, 50 * time.Millisecond, 30 * time.Second},
		{"a throttle below one 60 Hz frame is raised to it", Config{TopicThrottle: time.Millisecond}, 16 * time.Millisecond, 30 * time.Second},
		{"a throttle of exactly 16ms is kept", Config{TopicThrottle: 16 * time.Millisecond}, 16 * time.Millisecond, 30 * time.Second},
		{"set values are kept", Config{TopicThrottle: time.Second, TTL: time.Minute}, time.Second, time.Minute},
		{"negative durations count as unset", Config{TopicThrottle: -1, TTL: -1}, 50 * time.Millisecond, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.TopicThrottle != tc.throttle || got.TTL != tc.ttl || got.Now == nil {
				t.Fatalf("got Throttle %v, TTL %v, Now set %v; want %v, %v, true", got.TopicThrottle, got.TTL, got.Now != nil, tc.throttle, tc.ttl)
			}
		})
	}
}

// trackerFactory returns a fresh Tracker of one backend, configured with
// cfg, whose topics no other test sees (a unique key prefix for Redis). It
// releases the Tracker in t.Cleanup.
type trackerFactory func(t *testing.T, cfg Config) Tracker

func entry(key, user, data string) Entry {
	e := Entry{Key: key, User: json.RawMessage(user)}
	if data != "" {
		e.Data = json.RawMessage(data)
	}
	return e
}

func mustUpdate(t testing.TB, tr Tracker, topic string, e Entry) {
	t.Helper()
	if err := tr.Update(context.Background(), topic, e); err != nil {
		t.Fatalf("Update(%q, %q): %v", topic, e.Key, err)
	}
}

func mustRemove(t testing.TB, tr Tracker, topic, key string) {
	t.Helper()
	if err := tr.Remove(context.Background(), topic, key); err != nil {
		t.Fatalf("Remove(%q, %q): %v", topic, key, err)
	}
}

// nullIfNil is how the contract reads nil data: JSON null.
func nullIfNil(b json.RawMessage) string {
	if b == nil {
		return "null"
	}
	return string(b)
}

func entryString(e Entry) string {
	return fmt.Sprintf("{%q %s %s}", e.Key, nullIfNil(e.User), nullIfNil(e.Data))
}

// expectEntries fails t unless topic lists exactly want, in any order,
// byte for byte.
func expectEntries(t testing.TB, tr Tracker, topic string, want ...Entry) {
	t.Helper()
	got, err := tr.List(context.Background(), topic)
	if err != nil {
		t.Fatalf("List(%q): %v", topic, err)
	}
	var gs, ws []string
	for _, e := range got {
		gs = append(gs, entryString(e))
	}
	for _, e := range want {
		ws = append(ws, entryString(e))
	}
	slices.Sort(gs)
	slices.Sort(ws)
	if !slices.Equal(gs, ws) {
		t.Fatalf("List(%q) = %v, want %v", topic, gs, ws)
	}
}

// testTracker is the conformance suite every backend runs (docs/design.md, conventions §7).
func testTracker(t *testing.T, newTracker trackerFactory) {
	const ann, bo = `{"id":"u1"}`, `{"id":"u2"}`

	t.Run("an update is listed", func(t *testing.T) {
		tr := newTracker(t, Config{})
		expectEntries(t, tr, "canvas")
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":1,"y":2}`))
		mustUpdate(t, tr, "canvas", entry("c9", bo, `{"x":8,"y":1}`))
		expectEntries(t, tr, "canvas", entry("c7", ann, `{"x":1,"y":2}`), entry("c9", bo, `{"x":8,"y":1}`))
	})

	t.Run("the latest update replaces the entry whole", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":1,"y":2}`))
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":3}`))
		expectEntries(t, tr, "canvas", entry("c7", ann, `{"x":3}`))
		mustUpdate(t, tr, "canvas", entry("c7", `{"id":"u1","name":"Ann"}`, `[5,6]`))
		expectEntries(t, tr, "canvas", entry("c7", `{"id":"u1","name":"Ann"}`, `[5,6]`))
	})

	t.Run("data and user are kept byte for byte and copied from the caller", func(t *testing.T) {
		tr := newTracker(t, Config{})
		const user, data = `{ "id" :"u1","b":1,"a":2 }`, `{"x": 1.50, "y":9007199254740993}`
		e := Entry{Key: "c7", User: []byte(user), Data: []byte(data)}
		mustUpdate(t, tr, "canvas", e)
		copy(e.User, "XXXXXXXX")
		copy(e.Data, "XXXXXXXX")
		expectEntries(t, tr, "canvas", entry("c7", user, data))
		// The same user again, as every move of a connection carries it.
		mustUpdate(t, tr, "canvas", entry("c7", user, `{}`))
		expectEntries(t, tr, "canvas", entry("c7", user, `{}`))
	})

	t.Run("null data is listed as null", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustUpdate(t, tr, "canvas", entry("c7", ann, ""))
		mustUpdate(t, tr, "canvas", entry("c9", bo, "null"))
		expectEntries(t, tr, "canvas", entry("c7", ann, ""), entry("c9", bo, ""))
	})

	t.Run("remove deletes the entry and a missing one is no error", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustRemove(t, tr, "canvas", "c7")
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":1}`))
		mustUpdate(t, tr, "canvas", entry("c9", bo, `{"x":2}`))
		mustRemove(t, tr, "canvas", "c7")
		expectEntries(t, tr, "canvas", entry("c9", bo, `{"x":2}`))
		mustRemove(t, tr, "canvas", "c7")
		mustRemove(t, tr, "canvas", "c9")
		expectEntries(t, tr, "canvas")
		// A removed key may come back with a later attach.
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":4}`))
		expectEntries(t, tr, "canvas", entry("c7", ann, `{"x":4}`))
	})

	t.Run("topics are isolated", func(t *testing.T) {
		tr := newTracker(t, Config{})
		mustUpdate(t, tr, "canvas", entry("c7", ann, `{"x":1}`))
		mustUpdate(t, tr, "board", entry("c7", ann, `{"x":2}`))
		mustRemove(t, tr, "canvas", "c7")
		expectEntries(t, tr, "canvas")
		expectEntries(t, tr, "board", entry("c7", ann, `{"x":2}`))
	})

	t.Run("a done context stores nothing", func(t *testing.T) {
		tr := newTracker(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := tr.Update(ctx, "canvas", entry("c7", ann, `{}`)); err == nil {
			t.Fatal("Update with a canceled context returned no error")
		}
		expectEntries(t, tr, "canvas")
	})

	t.Run("concurrent moves of many connections keep each one's latest", func(t *testing.T) {
		tr := newTracker(t, Config{})
		const conns, moves = 16, 50
		var wg sync.WaitGroup
		for i := range conns {
			wg.Go(func() {
				key := fmt.Sprintf("c%d", i)
				for j := range moves {
					// The gateway serializes calls per key, as this loop does.
					if err := tr.Update(context.Background(), "canvas", entry(key, ann, fmt.Sprintf(`{"x":%d}`, j))); err != nil {
						t.Errorf("Update: %v", err)
						return
					}
				}
				if i%2 == 1 {
					if err := tr.Remove(context.Background(), "canvas", key); err != nil {
						t.Errorf("Remove: %v", err)
					}
				}
			})
		}
		wg.Wait()
		var want []Entry
		for i := 0; i < conns; i += 2 {
			want = append(want, entry(fmt.Sprintf("c%d", i), ann, fmt.Sprintf(`{"x":%d}`, moves-1)))
		}
		expectEntries(t, tr, "canvas", want...)
	})
}
