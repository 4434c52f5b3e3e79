package groups

import (
	"context"
	"encoding/json"
	"testing"
)

func TestMemory(t *testing.T) {
	testRegistry(t, func(t *testing.T, cfg Config) Registry { return NewMemory(cfg) })
}

func TestMemoryDeletesIdleGroups(t *testing.T) {
	m := NewMemory(Config{})
	ctx := context.Background()
	mustJoin(t, m, "lobby", "a", RoleMember, 0)
	mustJoin(t, m, "lobby", "b", RoleAdmin, 0)
	mustJoin(t, m, "kept", "a", RoleMember, 0)
	if err := m.SetMeta(ctx, "kept", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := m.CloseGroup(ctx, "closed"); err != nil {
		t.Fatal(err)
	}
	mustLeave(t, m, "lobby", "a")
	mustLeave(t, m, "lobby", "b")
	mustLeave(t, m, "kept", "a")
	// Neither a refused join nor a leave or clear of an unknown group may
	// create one.
	expectJoinError(t, m, "bad", "a", "owner", 0, ErrInvalidRole)
	mustLeave(t, m, "void", "a")
	if err := m.SetMeta(ctx, "void", nil); err != nil {
		t.Fatal(err)
	}
	// "kept" has metadata and "closed" must stay closed.
	if got := groupNames(m); len(got) != 2 || !got["kept"] || !got["closed"] {
		t.Fatalf("groups left: %v, want kept and closed", got)
	}
	// Clearing the metadata of an empty open group lets it go.
	if err := m.SetMeta(ctx, "kept", nil); err != nil {
		t.Fatal(err)
	}
	if got := groupNames(m); len(got) != 1 || !got["closed"] {
		t.Fatalf("groups left: %v, want closed", got)
	}
}

func groupNames(m *Memory) map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make(map[string]bool, len(m.groups))
	for name := range m.groups {
		names[name] = true
	}
	return names
}
