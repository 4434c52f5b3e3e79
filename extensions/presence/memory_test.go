package presence

import (
	"context"
	"encoding/json"
	"testing"
)

func TestMemory(t *testing.T) {
	testTracker(t, func(t *testing.T, cfg Config) Tracker { return NewMemory(cfg) })
}

func TestMemoryDeletesEmptyTopics(t *testing.T) {
	m := NewMemory(Config{})
	mustJoin(t, m, "room", "u1", "c1", `{}`)
	mustJoin(t, m, "room", "u1", "c2", `{}`)
	mustJoin(t, m, "hall", "u2", "c3", `{}`)
	mustLeave(t, m, "room", "u1", "c1")
	mustLeave(t, m, "room", "u1", "c2")
	mustLeave(t, m, "hall", "u2", "c3")
	// Leaves of unknown topics must not create them either.
	mustLeave(t, m, "void", "u3", "c4")
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.topics) != 0 {
		t.Fatalf("%d topics left after every member left: %v", len(m.topics), m.topics)
	}
}

func TestMemoryNeverCallsOnChange(t *testing.T) {
	m := NewMemory(Config{OnChange: func(changes []Change) {
		t.Errorf("OnChange called with %v on a single instance", changes)
	}})
	mustJoin(t, m, "room", "u1", "c1", `{"a":1}`)
	mustJoin(t, m, "room", "u1", "c2", `{"a":2}`)
	mustLeave(t, m, "room", "u1", "c1")
	mustLeave(t, m, "room", "u1", "c2")
}

// TestMemoryLeaveDoesNotAllocate guards the O(1), allocation-free leave
// that keeps a mass disconnect cheap (docs/design.md, lesson L-29, L-30).
func TestMemoryLeaveDoesNotAllocate(t *testing.T) {
	m := NewMemory(Config{})
	ctx := context.Background()
	data := json.RawMessage(`{}`)
	mustJoin(t, m, "room", "u1", "c1", `{}`)
	mustJoin(t, m, "room", "u1", "c2", `{}`)
	// Re-joining an existing connection with the same data and leaving one
	// of the key's two connections touch no new memory.
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := m.Join(ctx, "room", "u1", "c2", data); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Leave(ctx, "room", "u1", "c2"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Join+Leave of a second connection: %v allocations, want 0", allocs)
	}
}
