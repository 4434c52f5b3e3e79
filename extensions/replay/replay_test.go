package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		name                string
		after, head, oldest uint64
		want                bool
	}{
		{"nothing published yet", 0, 0, 0, true},
		{"the client is at the head", 5, 5, 3, true},
		{"the client is ahead of the head: the store lost its history", 9, 5, 3, false},
		{"the client is at the head of a cleared buffer", 5, 5, 0, true},
		{"the whole history is buffered", 0, 5, 1, true},
		{"the next seq is the oldest buffered", 4, 9, 5, true},
		{"older entries are buffered too", 6, 9, 5, true},
		{"the next seq was evicted", 3, 9, 5, false},
		{"a fresh client after eviction", 0, 9, 2, false},
		{"the buffer was cleared or expired behind the counter", 3, 9, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Covers(tc.after, tc.head, tc.oldest); got != tc.want {
				t.Fatalf("Covers(%d, %d, %d) = %v, want %v", tc.after, tc.head, tc.oldest, got, tc.want)
			}
		})
	}
}

func TestConfigWithDefaults(t *testing.T) {
	got := Config{}.WithDefaults()
	if got.Size != DefaultSize || got.TTL != 0 || got.Now == nil {
		t.Fatalf("Config{}.WithDefaults() = %+v, want Size %d, TTL 0, a clock", got, DefaultSize)
	}
	fixed := time.Unix(1, 0)
	set := Config{Size: 5, TTL: time.Hour, Now: func() time.Time { return fixed }}.WithDefaults()
	if set.Size != 5 || set.TTL != time.Hour || !set.Now().Equal(fixed) {
		t.Fatalf("WithDefaults changed set fields: %+v", set)
	}
	if neg := (Config{Size: -1, TTL: -time.Second}).WithDefaults(); neg.Size != DefaultSize || neg.TTL != 0 {
		t.Fatalf("negative fields: %+v, want the defaults", neg)
	}
}

// storeFactory returns a fresh, empty Store configured by cfg, which the
// factory closes in t.Cleanup. A backend whose TTL follows its server's
// clock cannot honour cfg.Now; its factory calls t.Skip when cfg.Now is set,
// as the suite sets it only in the subtests that need a controlled clock.
type storeFactory func(t *testing.T, cfg Config) Store

// testStore is the conformance suite every backend runs (docs/design.md, conventions §7). It
// uses only the Store interface and gives every test its own topics, so a
// backend on a shared server only has to isolate ClearAll (a key prefix or
// schema per factory call).
func testStore(t *testing.T, newStore storeFactory) {
	t.Run("a topic never appended to has head 0 and nothing to replay", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("fresh")
		if h := mustHead(t, s, topic); h != 0 {
			t.Fatalf("Head = %d, want 0", h)
		}
		expectRange(t, mustSince(t, s, topic, 0), 0, false, 1, 0)
		// A client holding seq 7 of a topic the store has no head for saw
		// history the store lost (docs/protocol.md §5.2).
		expectRange(t, mustSince(t, s, topic, 7), 0, true, 1, 0)
	})

	t.Run("seqs start at 1 and are contiguous", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("contiguous")
		appendN(t, s, topic, 5)
		if h := mustHead(t, s, topic); h != 5 {
			t.Fatalf("Head = %d, want 5", h)
		}
		expectRange(t, mustSince(t, s, topic, 0), 5, false, 1, 5)
	})

	t.Run("concurrent appends to one topic get distinct contiguous seqs", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("concurrent")
		const workers, each = 16, 50
		got := make([][]uint64, workers) // got[w][i]: the seq of worker w's i-th append
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					seq, err := s.Append(context.Background(), topic, "e", workerData(w, i))
					if err != nil {
						t.Errorf("Append: %v", err)
						return
					}
					got[w] = append(got[w], seq)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		bySeq := make(map[uint64]json.RawMessage, workers*each)
		for w := range workers {
			for i, seq := range got[w] {
				if i > 0 && seq <= got[w][i-1] {
					t.Fatalf("worker %d got seq %d after %d", w, seq, got[w][i-1])
				}
				if _, dup := bySeq[seq]; dup {
					t.Fatalf("seq %d assigned twice", seq)
				}
				bySeq[seq] = workerData(w, i)
			}
		}
		rg := mustSince(t, s, topic, 0)
		if rg.Head != workers*each || rg.Truncated || len(rg.Entries) != workers*each {
			t.Fatalf("Since(0): head %d, truncated %v, %d entries; want %d, false, %d", rg.Head, rg.Truncated, len(rg.Entries), workers*each, workers*each)
		}
		for i, e := range rg.Entries {
			if e.Seq != uint64(i+1) {
				t.Fatalf("entry %d has seq %d", i, e.Seq)
			}
			if want, ok := bySeq[e.Seq]; !ok || !bytes.Equal(e.Data, want) {
				t.Fatalf("seq %d holds %s, but the Append that got it stored %s", e.Seq, e.Data, want)
			}
		}
	})

	t.Run("Since reads one snapshot while appends run", func(t *testing.T) {
		s := newStore(t, Config{Size: 50})
		topic := uniqueTopic("snapshot")
		const appends = 400
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			for i := range appends {
				if _, err := s.Append(context.Background(), topic, eventFor(uint64(i+1)), dataFor(uint64(i+1))); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		}()
		for r := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lastHead uint64
				for n := 0; ; n++ {
					select {
					case <-done:
						return
					default:
					}
					after := uint64(n*(r+1)) % (lastHead + 1)
					rg, err := s.Since(context.Background(), topic, after)
					if err != nil {
						t.Errorf("Since: %v", err)
						return
					}
					if err := checkRange(rg, after); err != nil {
						t.Errorf("Since(%d) during appends: %v", after, err)
						return
					}
					if rg.Head < lastHead {
						t.Errorf("head went back from %d to %d", lastHead, rg.Head)
						return
					}
					lastHead = rg.Head
				}
			}()
		}
		wg.Wait()
	})

	t.Run("Since returns exactly the entries after the seq asked for", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("since")
		appendN(t, s, topic, 10)
		for after := uint64(0); after <= 12; after++ {
			// Beyond the head is truncated: the store lost what the client saw.
			expectRange(t, mustSince(t, s, topic, after), 10, after > 10, after+1, 10)
		}
	})

	t.Run("eviction beyond Size reports truncation exactly as docs/protocol.md §5.2", func(t *testing.T) {
		for _, tc := range []struct {
			name              string
			size, appends     int
			after             uint64
			first, last, head uint64
			truncated         bool
		}{
			{"a full buffer that evicted nothing covers everything", 5, 5, 0, 1, 5, 5, false},
			{"one eviction truncates a fresh client", 5, 6, 0, 2, 6, 6, true},
			{"one eviction covers a client that saw seq 1", 5, 6, 1, 2, 6, 6, false},
			{"a fresh client after many evictions gets what is left", 5, 12, 0, 8, 12, 12, true},
			{"the gap starts two before the oldest", 5, 12, 6, 8, 12, 12, true},
			{"the gap starts right at the oldest", 5, 12, 7, 8, 12, 12, false},
			{"the gap starts inside the buffer", 5, 12, 8, 9, 12, 12, false},
			{"one entry missed", 5, 12, 11, 12, 12, 12, false},
			{"the client is at the head", 5, 12, 12, 13, 12, 12, false},
			{"the client is ahead of the head: the store lost its history", 5, 12, 30, 31, 12, 12, true},
			{"a buffer of one keeps the newest", 1, 3, 0, 3, 3, 3, true},
			{"a buffer of one covers the seq before its entry", 1, 3, 2, 3, 3, 3, false},
			{"the default Size keeps 1000", 0, 1003, 3, 4, 1003, 1003, false},
			{"the default Size evicted seq 3", 0, 1003, 2, 4, 1003, 1003, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := newStore(t, Config{Size: tc.size})
				topic := uniqueTopic("evict")
				appendN(t, s, topic, tc.appends)
				expectRange(t, mustSince(t, s, topic, tc.after), tc.head, tc.truncated, tc.first, tc.last)
			})
		}
	})

	t.Run("Clear keeps the counter and reports the gap as truncated", func(t *testing.T) {
		s := newStore(t, Config{Size: 10})
		topic := uniqueTopic("clear")
		appendN(t, s, topic, 3)
		mustClear(t, s, topic)
		if h := mustHead(t, s, topic); h != 3 {
			t.Fatalf("Head after Clear = %d, want 3", h)
		}
		expectRange(t, mustSince(t, s, topic, 0), 3, true, 1, 0)
		expectRange(t, mustSince(t, s, topic, 2), 3, true, 1, 0)
		expectRange(t, mustSince(t, s, topic, 3), 3, false, 1, 0)
		if seq := mustAppend(t, s, topic, eventFor(4), dataFor(4)); seq != 4 {
			t.Fatalf("Append after Clear returned seq %d, want 4", seq)
		}
		expectRange(t, mustSince(t, s, topic, 3), 4, false, 4, 4)
		expectRange(t, mustSince(t, s, topic, 1), 4, true, 4, 4)

		never := uniqueTopic("clear-never")
		mustClear(t, s, never)
		expectRange(t, mustSince(t, s, never, 0), 0, false, 1, 0)
	})

	t.Run("ClearAll drops every topic's events and keeps its counter", func(t *testing.T) {
		s := newStore(t, Config{Size: 10})
		a, b := uniqueTopic("clearall-a"), uniqueTopic("clearall-b")
		appendN(t, s, a, 4)
		appendN(t, s, b, 2)
		if err := s.ClearAll(context.Background()); err != nil {
			t.Fatalf("ClearAll: %v", err)
		}
		for topic, head := range map[string]uint64{a: 4, b: 2} {
			if h := mustHead(t, s, topic); h != head {
				t.Fatalf("Head(%s) after ClearAll = %d, want %d", topic, h, head)
			}
			expectRange(t, mustSince(t, s, topic, 0), head, true, head+1, 0)
			if seq := mustAppend(t, s, topic, eventFor(head+1), dataFor(head+1)); seq != head+1 {
				t.Fatalf("Append(%s) after ClearAll returned seq %d, want %d", topic, seq, head+1)
			}
			expectRange(t, mustSince(t, s, topic, head), head+1, false, head+1, head+1)
		}
	})

	t.Run("entries expire after TTL without an Append, keeping the counter (controlled clock)", func(t *testing.T) {
		clock := testsvc.NewClock()
		const ttl = time.Minute
		s := newStore(t, Config{Size: 10, TTL: ttl, Now: clock.Now})
		topic := uniqueTopic("ttl")
		appendN(t, s, topic, 1)
		clock.Advance(ttl / 2)
		mustAppend(t, s, topic, eventFor(2), dataFor(2))
		// An Append keeps the whole topic: seq 1 is older than the TTL.
		clock.Advance(ttl - time.Millisecond)
		expectRange(t, mustSince(t, s, topic, 0), 2, false, 1, 2)
		clock.Advance(time.Millisecond)
		expectRange(t, mustSince(t, s, topic, 0), 2, true, 1, 0)
		expectRange(t, mustSince(t, s, topic, 1), 2, true, 1, 0)
		expectRange(t, mustSince(t, s, topic, 2), 2, false, 1, 0)
		if h := mustHead(t, s, topic); h != 2 {
			t.Fatalf("Head after expiry = %d, want 2", h)
		}
		if seq := mustAppend(t, s, topic, eventFor(3), dataFor(3)); seq != 3 {
			t.Fatalf("Append after expiry returned seq %d, want 3", seq)
		}
		expectRange(t, mustSince(t, s, topic, 0), 3, true, 3, 3)
		expectRange(t, mustSince(t, s, topic, 2), 3, false, 3, 3)
	})

	t.Run("entries expire after TTL without an Append (real clock)", func(t *testing.T) {
		const ttl = 300 * time.Millisecond
		s := newStore(t, Config{Size: 10, TTL: ttl})
		topic := uniqueTopic("ttl-real")
		start := time.Now()
		appendN(t, s, topic, 2)
		// Meaningful only when the calls took less than half the TTL: a
		// machine too busy for that may have let the entries expire.
		rg := mustSince(t, s, topic, 0)
		skipIfSlow(t, start, ttl/2)
		expectRange(t, rg, 2, false, 1, 2)
		testsvc.WaitFor(t, 5*time.Second, "the buffer to expire", func() bool { return len(mustSince(t, s, topic, 0).Entries) == 0 })
		expectRange(t, mustSince(t, s, topic, 0), 2, true, 1, 0)
		expectRange(t, mustSince(t, s, topic, 2), 2, false, 1, 0)
		start = time.Now()
		if seq := mustAppend(t, s, topic, eventFor(3), dataFor(3)); seq != 3 {
			t.Fatalf("Append after expiry returned seq %d, want 3", seq)
		}
		rg = mustSince(t, s, topic, 2)
		skipIfSlow(t, start, ttl/2)
		expectRange(t, rg, 3, false, 3, 3)
	})

	t.Run("data comes back byte for byte", func(t *testing.T) {
		s := newStore(t, Config{Size: 100})
		topic := uniqueTopic("bytes")
		payloads := []string{
			`[]`,
			`{}`,
			`9007199254740991`,
			`9007199254740993`,
			`{"b":1,"a":2}`,
			`{ "spaced" : [ 1 , 2 ] }`,
			`1.10e400`,
			`-0.0`,
			`"\u00e9\ud83d\ude00 é 😀 \u2028"`,
			`"\u0000\u001f\"\\\/"`,
			`"<script>&amp;"`,
			`null`,
			`true`,
			`{"deep":[[[[[[[[[[{"x":"y"}]]]]]]]]]]}`,
			`"` + strings.Repeat("x", 64<<10) + `"`,
		}
		for _, p := range payloads {
			mustAppend(t, s, topic, "e", json.RawMessage(p))
		}
		mustAppend(t, s, topic, "nil", nil)
		rg := mustSince(t, s, topic, 0)
		if len(rg.Entries) != len(payloads)+1 {
			t.Fatalf("%d entries, want %d", len(rg.Entries), len(payloads)+1)
		}
		for i, p := range payloads {
			if got := rg.Entries[i].Data; !bytes.Equal(got, []byte(p)) {
				t.Errorf("data %.40q came back as %.40q", p, got)
			}
		}
		if got := rg.Entries[len(payloads)].Data; got != nil && string(got) != "null" {
			t.Errorf("nil data came back as %q, want nil or null", got)
		}
	})

	t.Run("Append keeps no reference to the caller's data", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("copy")
		data := []byte(`{"v":"original"}`)
		mustAppend(t, s, topic, "e", data)
		copy(data, `{"v":"CLOBBERED"}`)
		if rg := mustSince(t, s, topic, 0); len(rg.Entries) != 1 || string(rg.Entries[0].Data) != `{"v":"original"}` {
			t.Fatalf("stored data changed with the caller's slice: %+v", rg.Entries)
		}
	})

	t.Run("topics are isolated", func(t *testing.T) {
		s := newStore(t, Config{Size: 3})
		base := uniqueTopic("iso")
		// Names a backend could confuse when it builds keys by concatenation.
		topics := []string{base, base + ":seq", base + ":buf", base + "*", base + "/x"}
		for i, topic := range topics {
			appendN(t, s, topic, i+1)
		}
		mustClear(t, s, topics[1])
		for i, topic := range topics {
			head := uint64(i + 1)
			switch {
			case i == 1:
				expectRange(t, mustSince(t, s, topic, 0), head, true, 1, 0)
			case head > 3:
				expectRange(t, mustSince(t, s, topic, 0), head, true, head-2, head)
			default:
				expectRange(t, mustSince(t, s, topic, 0), head, false, 1, head)
			}
		}
	})

	t.Run("a done context is refused", func(t *testing.T) {
		s := newStore(t, Config{})
		topic := uniqueTopic("canceled")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Append(ctx, topic, "e", nil); !errors.Is(err, context.Canceled) {
			t.Errorf("Append returned %v, want context.Canceled", err)
		}
		if _, err := s.Head(ctx, topic); !errors.Is(err, context.Canceled) {
			t.Errorf("Head returned %v, want context.Canceled", err)
		}
		if _, err := s.Since(ctx, topic, 0); !errors.Is(err, context.Canceled) {
			t.Errorf("Since returned %v, want context.Canceled", err)
		}
		if err := s.Clear(ctx, topic); !errors.Is(err, context.Canceled) {
			t.Errorf("Clear returned %v, want context.Canceled", err)
		}
		if err := s.ClearAll(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("ClearAll returned %v, want context.Canceled", err)
		}
	})
}

var topicSerial atomic.Int64

// uniqueTopic returns a valid wire topic no other test of this process or
// of a concurrent one uses.
func uniqueTopic(name string) string {
	return fmt.Sprintf("test:%s:%d:%d", name, os.Getpid(), topicSerial.Add(1))
}

// eventFor and dataFor are what appendN stores at a seq, so that a check of
// the entries also checks that each seq kept its own event.
func eventFor(seq uint64) string { return fmt.Sprintf("ev%d", seq%3) }

func dataFor(seq uint64) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq)) }

func workerData(w, i int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`[%d,%d]`, w, i)) }

// appendN appends n events to a topic whose head is 0, checking their seqs.
func appendN(t testing.TB, s Store, topic string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if seq := mustAppend(t, s, topic, eventFor(uint64(i)), dataFor(uint64(i))); seq != uint64(i) {
			t.Fatalf("Append %d returned seq %d", i, seq)
		}
	}
}

func mustAppend(t testing.TB, s Store, topic, event string, data json.RawMessage) uint64 {
	t.Helper()
	seq, err := s.Append(context.Background(), topic, event, data)
	if err != nil {
		t.Fatalf("Append(%s): %v", topic, err)
	}
	return seq
}

func mustHead(t testing.TB, s Store, topic string) uint64 {
	t.Helper()
	h, err := s.Head(context.Background(), topic)
	if err != nil {
		t.Fatalf("Head(%s): %v", topic, err)
	}
	return h
}

func mustSince(t testing.TB, s Store, topic string, after uint64) Range {
	t.Helper()
	rg, err := s.Since(context.Background(), topic, after)
	if err != nil {
		t.Fatalf("Since(%s, %d): %v", topic, after, err)
	}
	return rg
}

func mustClear(t testing.TB, s Store, topic string) {
	t.Helper()
	if err := s.Clear(context.Background(), topic); err != nil {
		t.Fatalf("Clear(%s): %v", topic, err)
	}
}

// expectRange checks a Range against head, truncated and the seqs first to
// last (none when first > last), each holding what appendN stored.
func expectRange(t testing.TB, rg Range, head uint64, truncated bool, first, last uint64) {
	t.Helper()
	var want []uint64
	for seq := first; seq <= last; seq++ {
		want = append(want, seq)
	}
	got := make([]uint64, len(rg.Entries))
	for i, e := range rg.Entries {
		got[i] = e.Seq
	}
	if rg.Head != head || rg.Truncated != truncated || !slices.Equal(got, want) {
		t.Fatalf("got head %d, truncated %v, seqs %v; want head %d, truncated %v, seqs %v", rg.Head, rg.Truncated, got, head, truncated, want)
	}
	for _, e := range rg.Entries {
		if e.Event != eventFor(e.Seq) || !bytes.Equal(e.Data, dataFor(e.Seq)) {
			t.Fatalf("seq %d holds (%q, %s), want (%q, %s)", e.Seq, e.Event, e.Data, eventFor(e.Seq), dataFor(e.Seq))
		}
	}
}

// checkRange checks what must hold of any Since(after) result: contiguous
// increasing entries above after ending at Head, and Truncated as Covers
// decides from them.
func checkRange(rg Range, after uint64) error {
	for i, e := range rg.Entries {
		if e.Seq <= after {
			return fmt.Errorf("entry %d has seq %d, not above %d", i, e.Seq, after)
		}
		if i > 0 && e.Seq != rg.Entries[i-1].Seq+1 {
			return fmt.Errorf("seq %d follows %d", e.Seq, rg.Entries[i-1].Seq)
		}
		if e.Event != eventFor(e.Seq) || !bytes.Equal(e.Data, dataFor(e.Seq)) {
			return fmt.Errorf("seq %d holds (%q, %s)", e.Seq, e.Event, e.Data)
		}
	}
	if n := len(rg.Entries); n > 0 {
		if last := rg.Entries[n-1].Seq; last != rg.Head {
			return fmt.Errorf("last entry %d is not the head %d of the same snapshot", last, rg.Head)
		}
		if want := rg.Entries[0].Seq != after+1; rg.Truncated != want {
			return fmt.Errorf("truncated %v with entries from %d", rg.Truncated, rg.Entries[0].Seq)
		}
	} else if rg.Head > after && !rg.Truncated {
		return fmt.Errorf("no entries between %d and head %d, yet not truncated", after, rg.Head)
	}
	return nil
}

// skipIfSlow skips the rest of a timing-dependent test, saying so, when
// more than budget passed since start: a machine that busy may have let a
// TTL run out, and the assertion that follows would test the machine.
func skipIfSlow(t testing.TB, start time.Time, budget time.Duration) {
	t.Helper()
	if took := time.Since(start); took >= budget {
		t.Skipf("the calls took %s, not under %s: too slow a run to check a TTL this short", took, budget)
	}
}
