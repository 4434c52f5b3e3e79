package replay

import (
	"testing"
	"time"
)

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		name                string
		after, head, oldest uint64
		want                bool
	}{
		{"nothing published yet", 0, 0, 0, true},
		{"the client is at the head", 5, 5, 3, true},
		{"the client is ahead of the head", 9, 5, 3, true},
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
