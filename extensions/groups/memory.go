package groups

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
)

// Memory is the Registry of a gateway alone on its instance. Its members
// die with the process, and so do their connections, so none ever expires:
// Config.TTL, Refresh and Now are ignored, and it starts no goroutine.
//
// One mutex makes every call atomic, so the capacity and closed checks of
// Join and its insert are one step. Counts are kept per role as members
// come and go, so Join, Leave and State cost O(1) whatever the group's
// size. A group is deleted once it is open, empty and without metadata, so
// memory is bounded by the members present, the metadata set and the
// closed groups, which are kept to stay closed (Registry.CloseGroup).
type Memory struct {
	mu     sync.Mutex
	groups map[string]*group
}

type group struct {
	members map[string]Role // connection id → role
	counts  Counts          // members per role, kept in step with members
	meta    json.RawMessage // owned by the Memory; replaced whole, never modified
	closed  bool
}

// add adds n members of role to c.
func (c *Counts) add(role Role, n int) {
	switch role {
	case RoleMember:
		c.Member += n
	case RoleAdmin:
		c.Admin += n
	case RoleViewer:
		c.Viewer += n
	}
}

// NewMemory returns an empty Memory. It ignores cfg, as the Memory
// documentation explains, and needs no Close.
func NewMemory(cfg Config) *Memory {
	return &Memory{groups: make(map[string]*group)}
}

// Join implements Registry. On error it returns zero Counts.
func (m *Memory) Join(ctx context.Context, group, connID string, role Role, maxMembers int) (Counts, error) {
	if !role.Valid() {
		return Counts{}, fmt.Errorf("joining group with role %q: %w", role, ErrInvalidRole)
	}
	if err := ctx.Err(); err != nil {
		return Counts{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[group]
	if g == nil {
		g = m.newGroup(group)
	}
	if g.closed {
		return Counts{}, ErrClosed
	}
	if old, ok := g.members[connID]; ok {
		// A re-join only moves the member between roles: it never counts
		// twice, so it is never refused for capacity.
		g.counts.add(old, -1)
		g.counts.add(role, 1)
		g.members[connID] = role
		return g.counts, nil
	}
	if maxMembers > 0 && len(g.members) >= maxMembers {
		return Counts{}, ErrFull
	}
	g.members[connID] = role
	g.counts.add(role, 1)
	return g.counts, nil
}

// Leave implements Registry.
func (m *Memory) Leave(ctx context.Context, group, connID string) (Counts, error) {
	if err := ctx.Err(); err != nil {
		return Counts{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[group]
	if g == nil {
		return Counts{}, nil
	}
	if role, ok := g.members[connID]; ok {
		delete(g.members, connID)
		g.counts.add(role, -1)
		m.collect(group, g)
	}
	return g.counts, nil
}

// State implements Registry. Meta is a copy the caller may keep and modify;
// a group never touched reads as the zero State.
func (m *Memory) State(ctx context.Context, group string) (State, error) {
	if err := ctx.Err(); err != nil {
		return State{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[group]
	if g == nil {
		return State{}, nil
	}
	return State{Counts: g.counts, Meta: bytes.Clone(g.meta), Closed: g.closed}, nil
}

// CloseGroup implements Registry. A closed group is never deleted, so it
// stays closed for the life of the Memory.
func (m *Memory) CloseGroup(ctx context.Context, group string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[group]
	if g == nil {
		g = m.newGroup(group)
	}
	g.closed = true
	clear(g.members)
	g.counts = Counts{}
	return nil
}

// SetMeta implements Registry. It keeps a copy of meta, so the caller may
// reuse its buffer. It does not parse meta: the caller checked that it is
// a JSON object. A nil meta removes the metadata.
func (m *Memory) SetMeta(ctx context.Context, group string, meta json.RawMessage) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[group]
	if g == nil {
		if meta == nil {
			return nil
		}
		g = m.newGroup(group)
	}
	g.meta = bytes.Clone(meta)
	m.collect(group, g)
	return nil
}

// newGroup stores and returns an empty open group. The caller holds m.mu.
func (m *Memory) newGroup(name string) *group {
	g := &group{members: make(map[string]Role)}
	m.groups[name] = g
	return g
}

// collect deletes g if nothing in it needs keeping: no member, no
// metadata, not closed. The caller holds m.mu.
func (m *Memory) collect(name string, g *group) {
	if len(g.members) == 0 && g.meta == nil && !g.closed {
		delete(m.groups, name)
	}
}

// Interface guards
var _ Registry = (*Memory)(nil)
