package cursor

import (
	"bytes"
	"context"
	"sync"
)

// Memory is the Tracker of a gateway alone on its instance. Its entries
// die with the process, and so do the connections that own them, so none
// ever expires: Config.TTL, OnExpire and Now are ignored, and it starts no
// goroutine. A topic whose last entry is removed is deleted, so memory is
// bounded by the entries of attached connections.
type Memory struct {
	mu     sync.Mutex
	topics map[string]map[string]Entry // topic → key → entry
}

// NewMemory returns an empty Memory. It ignores cfg, as the Memory
// documentation explains, and needs no Close.
func NewMemory(cfg Config) *Memory {
	return &Memory{topics: make(map[string]map[string]Entry)}
}

// Update implements Tracker. It keeps copies of e.User and e.Data, so the
// caller may reuse its buffers; a User equal to the stored one is not
// copied again, as a connection's identity rarely changes between moves.
func (m *Memory) Update(ctx context.Context, topic string, e Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	entries := m.topics[topic]
	if entries == nil {
		entries = make(map[string]Entry)
		m.topics[topic] = entries
	}
	user := e.User
	if old, ok := entries[e.Key]; ok && bytes.Equal(old.User, e.User) {
		user = old.User
	} else {
		user = bytes.Clone(user)
	}
	entries[e.Key] = Entry{Key: e.Key, User: user, Data: bytes.Clone(e.Data)}
	return nil
}

// Remove implements Tracker.
func (m *Memory) Remove(ctx context.Context, topic, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	entries, ok := m.topics[topic]
	if !ok {
		return nil
	}
	delete(entries, key)
	if len(entries) == 0 {
		delete(m.topics, topic)
	}
	return nil
}

// List implements Tracker. The User and Data of the returned entries are
// shared with the Memory, which never modifies them once stored, and must
// not be modified.
func (m *Memory) List(ctx context.Context, topic string) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	entries := m.topics[topic]
	out := make([]Entry, 0, len(entries))
	for _, e := range entries {
		out = append(out, e)
	}
	return out, nil
}

// Interface guards
var _ Tracker = (*Memory)(nil)
