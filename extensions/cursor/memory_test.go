package cursor

import (
	"testing"
	"time"
)

func TestMemory(t *testing.T) {
	testTracker(t, func(t *testing.T, cfg Config) Tracker { return NewMemory(cfg) })
}

func TestMemoryDeletesEmptyTopics(t *testing.T) {
	m := NewMemory(Config{})
	mustUpdate(t, m, "canvas", entry("c7", `{}`, `{"x":1}`))
	mustUpdate(t, m, "board", entry("c9", `{}`, `{"x":1}`))
	mustRemove(t, m, "canvas", "c7")
	mustRemove(t, m, "board", "c9")
	// Removes on unknown topics must not create them either.
	mustRemove(t, m, "void", "c1")
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.topics) != 0 {
		t.Fatalf("%d topics left after every entry was removed: %v", len(m.topics), m.topics)
	}
}

func TestMemoryNeverExpires(t *testing.T) {
	now := epoch
	m := NewMemory(Config{
		TTL:      time.Second,
		Now:      func() time.Time { return now },
		OnExpire: func(topic string, keys []string) { t.Errorf("OnExpire(%q, %v) on a single instance", topic, keys) },
	})
	mustUpdate(t, m, "canvas", entry("c7", `{}`, `{"x":1}`))
	now = now.Add(time.Hour)
	expectEntries(t, m, "canvas", entry("c7", `{}`, `{"x":1}`))
}
