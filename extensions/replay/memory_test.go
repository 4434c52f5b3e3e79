package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestMemory(t *testing.T) {
	testStore(t, func(t *testing.T, cfg Config) Store { return NewMemory(cfg) })
}

func TestMemorySinceMatchesAModelAtEveryRingPosition(t *testing.T) {
	for _, size := range []int{1, 2, 3, 7, 8, 9, 20} {
		t.Run(fmt.Sprintf("size %d", size), func(t *testing.T) {
			m := NewMemory(Config{Size: size})
			const topic = "model"
			for head := uint64(1); head <= 40; head++ {
				mustAppend(t, m, topic, eventFor(head), dataFor(head))
				oldest := uint64(1)
				if head > uint64(size) {
					oldest = head - uint64(size) + 1
				}
				for after := uint64(0); after <= head+1; after++ {
					first := max(after+1, oldest)
					expectRange(t, mustSince(t, m, topic, after), head, after+1 < oldest || after > head, first, head)
				}
			}
		})
	}
}

func TestMemorySweepFreesOnlyIdleTopics(t *testing.T) {
	clock := testsvc.NewClock()
	m := NewMemory(Config{Size: 10, TTL: time.Minute, Now: clock.Now})
	appendN(t, m, "idle", 3)
	clock.Advance(30 * time.Second)
	appendN(t, m, "busy", 2)
	mustClear(t, m, "busy-cleared")
	if n := m.Sweep(clock.Now()); n != 0 {
		t.Fatalf("Sweep before any TTL elapsed emptied %d topics", n)
	}
	clock.Advance(30 * time.Second)
	if n := m.Sweep(clock.Now()); n != 1 {
		t.Fatalf("Sweep emptied %d topics, want 1", n)
	}
	if r := m.shard("idle").topics["idle"]; r.entries != nil || r.head != 3 {
		t.Fatalf("idle topic after Sweep: %d entries, head %d; want its memory freed and head 3", len(r.entries), r.head)
	}
	if r := m.shard("busy").topics["busy"]; len(r.entries) != 2 {
		t.Fatalf("busy topic after Sweep: %d entries, want 2", len(r.entries))
	}
	expectRange(t, mustSince(t, m, "idle", 0), 3, true, 1, 0)
	if n := m.Sweep(clock.Now()); n != 0 {
		t.Fatalf("a second Sweep emptied %d topics again", n)
	}
	if n := NewMemory(Config{}).Sweep(time.Now().Add(time.Hour)); n != 0 {
		t.Fatalf("Sweep without a TTL emptied %d topics", n)
	}
}

func TestMemoryRingGrowsOnlyUpToSize(t *testing.T) {
	m := NewMemory(Config{Size: 100})
	appendN(t, m, "grow", 3)
	if r := m.shard("grow").topics["grow"]; cap(r.entries) > 8 {
		t.Fatalf("3 entries hold %d slots", cap(r.entries))
	}
	for i := 4; i <= 250; i++ {
		mustAppend(t, m, "grow", eventFor(uint64(i)), dataFor(uint64(i)))
	}
	if r := m.shard("grow").topics["grow"]; cap(r.entries) != 100 {
		t.Fatalf("a full ring of 100 holds %d slots", cap(r.entries))
	}
}

func TestMemoryAppendDoesNotAllocateBeyondTheData(t *testing.T) {
	m := NewMemory(Config{Size: 16})
	ctx := context.Background()
	data := json.RawMessage(`{"id":1,"text":"hello"}`)
	appendN(t, m, "allocs", 16) // fill the ring: no more growth
	if n := testing.AllocsPerRun(100, func() { _, _ = m.Append(ctx, "allocs", "created", data) }); n != 1 {
		t.Fatalf("Append on a full ring allocates %v times, want 1 (the copy of data)", n)
	}
}
