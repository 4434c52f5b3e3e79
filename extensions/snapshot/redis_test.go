package snapshot

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestRedisSharesSnapshotsUntilTheyExpire(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	ctx := context.Background()
	a, err := NewRedis(client, RedisConfig{KeyPrefix: prefix, Gateway: "/ws"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewRedis(client, RedisConfig{KeyPrefix: prefix, Gateway: "/ws"})
	other, _ := NewRedis(client, RedisConfig{KeyPrefix: prefix, Gateway: "/other"})

	if err := a.Put(ctx, "i1", []byte(`{"instance":"i1"}`), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "i2", []byte(`{"instance":"i2","v":1}`), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// A later put of an instance replaces its snapshot.
	if err := b.Put(ctx, "i2", []byte(`{"instance":"i2","v":2}`), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got := all(t, a)
	if want := []string{`{"instance":"i1"}`, `{"instance":"i2","v":2}`}; !slices.Equal(got, want) {
		t.Fatalf("All = %q, want %q", got, want)
	}
	if got := all(t, other); len(got) != 0 {
		t.Fatalf("another gateway's All = %q, want none", got)
	}
	testsvc.WaitFor(t, 5*time.Second, "i2's snapshot expires", func() bool { return len(all(t, a)) == 1 })
	if got := all(t, b); !slices.Equal(got, []string{`{"instance":"i1"}`}) {
		t.Fatalf("after i2's ttl All = %q, want only i1", got)
	}
}

func TestRedisWatchMarkExpires(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	ctx := context.Background()
	s, _ := NewRedis(client, RedisConfig{KeyPrefix: prefix, Gateway: "g"})
	if w, err := s.Watched(ctx); err != nil || w {
		t.Fatalf("Watched before any Watch = %v, %v; want false", w, err)
	}
	if err := s.Watch(ctx, 150*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if w, err := s.Watched(ctx); err != nil || !w {
		t.Fatalf("Watched after Watch = %v, %v; want true", w, err)
	}
	testsvc.WaitFor(t, 5*time.Second, "the watch mark expires", func() bool { w, _ := s.Watched(ctx); return !w })
}

func TestNewRedisWantsAGateway(t *testing.T) {
	if _, err := NewRedis(nil, RedisConfig{}); err == nil {
		t.Fatal("NewRedis accepted an empty gateway name")
	}
}

func all(t *testing.T, s *Redis) []string {
	t.Helper()
	vals, err := s.All(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = string(v)
	}
	slices.Sort(out)
	return out
}
