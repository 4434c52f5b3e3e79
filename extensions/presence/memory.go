package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
)

// Memory is the Tracker of a gateway alone on its instance. Its state dies
// with the process, and so do all the connections it records, so nothing
// ever needs to expire: Config.TTL, Refresh and Now are ignored, and it
// starts no goroutine. No other instance exists to make changes, so
// Config.OnChange is never called; every change is the return value of the
// Join or Leave that made it.
//
// Every call takes one mutex and does a constant number of map operations
// (List and Count aside), so Join and Leave cost O(1) whatever the size of
// the topic: a mass disconnect of n members costs O(n), not the O(n²) of
// the reference package's scans (docs/design.md, lesson L-29, L-30). A topic
// whose last member leaves is deleted, so memory is bounded by the
// connections present.
type Memory struct {
	mu     sync.Mutex
	topics map[string]map[string]*member // topic → key → member
}

// member is one key present on a topic. data is owned by the Memory and
// never modified once stored (Join replaces it whole), so it can be handed
// out without a copy.
type member struct {
	data  json.RawMessage
	conns map[string]struct{} // connection ids; never empty while stored
}

// NewMemory returns an empty Memory. It ignores cfg, as the Memory
// documentation explains, and needs no Close.
func NewMemory(cfg Config) *Memory {
	return &Memory{topics: make(map[string]map[string]*member)}
}

// Join implements Tracker. It keeps a copy of data, so the caller may reuse
// its buffer. The Data of the returned Member is shared with the Memory and
// must not be modified.
func (m *Memory) Join(ctx context.Context, topic, key, connID string, data json.RawMessage) (Change, error) {
	if err := ctx.Err(); err != nil {
		return Change{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	members := m.topics[topic]
	if members == nil {
		members = make(map[string]*member)
		m.topics[topic] = members
	}
	mb := members[key]
	if mb == nil {
		mb = &member{data: bytes.Clone(data), conns: map[string]struct{}{connID: {}}}
		members[key] = mb
		return Change{Topic: topic, Kind: Joined, Member: Member{Key: key, Data: mb.data}}, nil
	}
	mb.conns[connID] = struct{}{}
	if bytes.Equal(mb.data, data) {
		return Change{Topic: topic, Kind: NoChange, Member: Member{Key: key, Data: mb.data}}, nil
	}
	mb.data = bytes.Clone(data)
	return Change{Topic: topic, Kind: Updated, Member: Member{Key: key, Data: mb.data}}, nil
}

// Leave implements Tracker. It never fails but for a done ctx, in which
// case nothing was removed.
func (m *Memory) Leave(ctx context.Context, topic, key, connID string) (Change, error) {
	if err := ctx.Err(); err != nil {
		return Change{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	members := m.topics[topic]
	mb := members[key]
	if mb == nil {
		return Change{Topic: topic, Kind: NoChange, Member: Member{Key: key}}, nil
	}
	if _, ok := mb.conns[connID]; !ok {
		return Change{Topic: topic, Kind: NoChange, Member: Member{Key: key, Data: mb.data}}, nil
	}
	delete(mb.conns, connID)
	if len(mb.conns) > 0 {
		return Change{Topic: topic, Kind: NoChange, Member: Member{Key: key, Data: mb.data}}, nil
	}
	delete(members, key)
	if len(members) == 0 {
		delete(m.topics, topic)
	}
	return Change{Topic: topic, Kind: Left, Member: Member{Key: key, Data: mb.data}}, nil
}

// List implements Tracker. The Data of the returned members is shared with
// the Memory and must not be modified.
func (m *Memory) List(ctx context.Context, topic string) ([]Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	members := m.topics[topic]
	out := make([]Member, 0, len(members))
	for key, mb := range members {
		out = append(out, Member{Key: key, Data: mb.data})
	}
	return out, nil
}

// Count implements Tracker.
func (m *Memory) Count(ctx context.Context, topic string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.topics[topic]), nil
}

// Interface guards
var _ Tracker = (*Memory)(nil)
