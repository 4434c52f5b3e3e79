package groups

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestRoleValid(t *testing.T) {
	for role, want := range map[Role]bool{
		RoleMember: true, RoleAdmin: true, RoleViewer: true,
		"": false, "Admin": false, "owner": false, "member ": false,
	} {
		if got := role.Valid(); got != want {
			t.Errorf("Role(%q).Valid() = %v, want %v", role, got, want)
		}
	}
}

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name           string
		in             Config
		ttl, heartbeat time.Duration
	}{
		{"the zero Config gets the defaults", Config{}, 120 * time.Second, 30 * time.Second},
		{"a short TTL shortens the default heartbeat to a third of it", Config{TTL: 30 * time.Second}, 30 * time.Second, 10 * time.Second},
		{"set values are kept", Config{TTL: time.Hour, Refresh: time.Minute}, time.Hour, time.Minute},
		{"negative durations count as unset", Config{TTL: -1, Refresh: -1}, 120 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.TTL != tc.ttl || got.Refresh != tc.heartbeat || got.Now == nil {
				t.Fatalf("got TTL %v, Refresh %v, Now set %v; want %v, %v, true", got.TTL, got.Refresh, got.Now != nil, tc.ttl, tc.heartbeat)
			}
		})
	}
}

// registryFactory returns a fresh Registry of one backend, configured with
// cfg, whose groups no other test sees (a unique key prefix for Redis). It
// releases the Registry in t.Cleanup.
type registryFactory func(t *testing.T, cfg Config) Registry

func mustJoin(t testing.TB, r Registry, group, connID string, role Role, maxMembers int) Counts {
	t.Helper()
	c, err := r.Join(context.Background(), group, connID, role, maxMembers)
	if err != nil {
		t.Fatalf("Join(%q, %q, %q, %d): %v", group, connID, role, maxMembers, err)
	}
	return c
}

func mustLeave(t testing.TB, r Registry, group, connID string) Counts {
	t.Helper()
	c, err := r.Leave(context.Background(), group, connID)
	if err != nil {
		t.Fatalf("Leave(%q, %q): %v", group, connID, err)
	}
	return c
}

func mustState(t testing.TB, r Registry, group string) State {
	t.Helper()
	s, err := r.State(context.Background(), group)
	if err != nil {
		t.Fatalf("State(%q): %v", group, err)
	}
	return s
}

func expectCounts(t testing.TB, what string, got, want Counts) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: counts %+v, want %+v", what, got, want)
	}
}

func expectState(t testing.TB, r Registry, group string, want State) {
	t.Helper()
	got := mustState(t, r, group)
	if got.Counts != want.Counts || got.Closed != want.Closed || !bytes.Equal(got.Meta, want.Meta) || (got.Meta == nil) != (want.Meta == nil) {
		t.Fatalf("State(%q) = %+v, meta %s; want %+v, meta %s", group, got, got.Meta, want, want.Meta)
	}
}

func expectJoinError(t testing.TB, r Registry, group, connID string, role Role, maxMembers int, want error) {
	t.Helper()
	c, err := r.Join(context.Background(), group, connID, role, maxMembers)
	if !errors.Is(err, want) {
		t.Fatalf("Join(%q, %q, %q, %d) = %+v, %v; want %v", group, connID, role, maxMembers, c, err, want)
	}
}

// testRegistry is the conformance suite every backend runs (docs/design.md, conventions §7).
func testRegistry(t *testing.T, newRegistry registryFactory) {
	t.Run("joins are counted per role", func(t *testing.T) {
		r := newRegistry(t, Config{})
		expectCounts(t, "join a", mustJoin(t, r, "lobby", "a", RoleAdmin, 0), Counts{Admin: 1})
		expectCounts(t, "join b", mustJoin(t, r, "lobby", "b", RoleMember, 0), Counts{Member: 1, Admin: 1})
		expectCounts(t, "join c", mustJoin(t, r, "lobby", "c", RoleViewer, 0), Counts{Member: 1, Admin: 1, Viewer: 1})
		expectCounts(t, "join d", mustJoin(t, r, "lobby", "d", RoleMember, 0), Counts{Member: 2, Admin: 1, Viewer: 1})
		expectState(t, r, "lobby", State{Counts: Counts{Member: 2, Admin: 1, Viewer: 1}})
		expectCounts(t, "leave b", mustLeave(t, r, "lobby", "b"), Counts{Member: 1, Admin: 1, Viewer: 1})
		expectCounts(t, "leave a", mustLeave(t, r, "lobby", "a"), Counts{Member: 1, Viewer: 1})
		if got := mustState(t, r, "lobby").Counts.Total(); got != 2 {
			t.Fatalf("Total() = %d, want 2", got)
		}
	})

	t.Run("joining again changes the role without counting twice", func(t *testing.T) {
		r := newRegistry(t, Config{})
		mustJoin(t, r, "lobby", "a", RoleMember, 0)
		expectCounts(t, "same role", mustJoin(t, r, "lobby", "a", RoleMember, 0), Counts{Member: 1})
		expectCounts(t, "new role", mustJoin(t, r, "lobby", "a", RoleAdmin, 0), Counts{Admin: 1})
		expectCounts(t, "leave", mustLeave(t, r, "lobby", "a"), Counts{})
		expectState(t, r, "lobby", State{})
	})

	t.Run("a full group refuses new joins but not a re-join", func(t *testing.T) {
		r := newRegistry(t, Config{})
		mustJoin(t, r, "lobby", "a", RoleMember, 2)
		mustJoin(t, r, "lobby", "b", RoleMember, 2)
		expectJoinError(t, r, "lobby", "c", RoleMember, 2, ErrFull)
		expectCounts(t, "re-join", mustJoin(t, r, "lobby", "a", RoleViewer, 2), Counts{Member: 1, Viewer: 1})
		// A lower limit than the current size refuses newcomers only.
		expectCounts(t, "re-join over a lower limit", mustJoin(t, r, "lobby", "b", RoleAdmin, 1), Counts{Admin: 1, Viewer: 1})
		expectJoinError(t, r, "lobby", "c", RoleMember, 1, ErrFull)
		expectState(t, r, "lobby", State{Counts: Counts{Admin: 1, Viewer: 1}})
	})

	t.Run("a leave frees a slot", func(t *testing.T) {
		r := newRegistry(t, Config{})
		mustJoin(t, r, "lobby", "a", RoleMember, 2)
		mustJoin(t, r, "lobby", "b", RoleMember, 2)
		expectJoinError(t, r, "lobby", "c", RoleMember, 2, ErrFull)
		mustLeave(t, r, "lobby", "a")
		expectCounts(t, "join c", mustJoin(t, r, "lobby", "c", RoleViewer, 2), Counts{Member: 1, Viewer: 1})
		expectJoinError(t, r, "lobby", "a", RoleMember, 2, ErrFull)
	})

	t.Run("zero or negative maxMembers means no limit", func(t *testing.T) {
		r := newRegistry(t, Config{})
		for i := range 40 {
			mustJoin(t, r, "lobby", fmt.Sprintf("c%d", i), RoleMember, -i%2)
		}
		expectState(t, r, "lobby", State{Counts: Counts{Member: 40}})
	})

	t.Run("leaving as a non-member changes nothing", func(t *testing.T) {
		r := newRegistry(t, Config{})
		expectCounts(t, "unknown group", mustLeave(t, r, "lobby", "a"), Counts{})
		mustJoin(t, r, "lobby", "a", RoleAdmin, 0)
		expectCounts(t, "unknown connection", mustLeave(t, r, "lobby", "b"), Counts{Admin: 1})
		expectCounts(t, "last leave", mustLeave(t, r, "lobby", "a"), Counts{})
		expectCounts(t, "repeated leave", mustLeave(t, r, "lobby", "a"), Counts{})
		expectState(t, r, "lobby", State{})
	})

	t.Run("an invalid role is refused and changes nothing", func(t *testing.T) {
		r := newRegistry(t, Config{})
		for _, role := range []Role{"", "owner", "Admin"} {
			expectJoinError(t, r, "lobby", "a", role, 0, ErrInvalidRole)
		}
		expectState(t, r, "lobby", State{})
		mustJoin(t, r, "lobby", "a", RoleViewer, 0)
		expectJoinError(t, r, "lobby", "a", "owner", 0, ErrInvalidRole)
		expectState(t, r, "lobby", State{Counts: Counts{Viewer: 1}})
	})

	t.Run("a closed group has no members and refuses every join", func(t *testing.T) {
		r := newRegistry(t, Config{})
		mustJoin(t, r, "lobby", "a", RoleAdmin, 0)
		mustJoin(t, r, "lobby", "b", RoleMember, 0)
		if err := r.CloseGroup(context.Background(), "lobby"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectState(t, r, "lobby", State{Closed: true})
		expectJoinError(t, r, "lobby", "c", RoleMember, 0, ErrClosed)
		expectJoinError(t, r, "lobby", "a", RoleAdmin, 0, ErrClosed)
		expectCounts(t, "leave of a former member", mustLeave(t, r, "lobby", "a"), Counts{})
		if err := r.CloseGroup(context.Background(), "lobby"); err != nil {
			t.Fatalf("Close of a closed group: %v", err)
		}
		expectState(t, r, "lobby", State{Closed: true})
		// A group closed before anyone joined is closed all the same.
		if err := r.CloseGroup(context.Background(), "empty"); err != nil {
			t.Fatalf("Close of an unknown group: %v", err)
		}
		expectJoinError(t, r, "empty", "a", RoleMember, 0, ErrClosed)
		expectState(t, r, "empty", State{Closed: true})
	})

	t.Run("metadata round-trips byte for byte", func(t *testing.T) {
		r := newRegistry(t, Config{})
		expectState(t, r, "lobby", State{})
		// Spacing, key order, an empty array and a number beyond float64
		// precision all survive (docs/design.md, lesson L-24).
		odd := []byte(`{ "z":1, "a" : [ ], "n":9007199254740993, "s":"\u00e9" }`)
		want := bytes.Clone(odd)
		if err := r.SetMeta(context.Background(), "lobby", odd); err != nil {
			t.Fatalf("SetMeta: %v", err)
		}
		copy(odd, "XXXXXXXX") // the Registry kept its own copy
		expectState(t, r, "lobby", State{Meta: want})
		mustJoin(t, r, "lobby", "a", RoleMember, 0)
		mustLeave(t, r, "lobby", "a")
		expectState(t, r, "lobby", State{Meta: want})
		next := json.RawMessage(`{"topic":"chess"}`)
		if err := r.SetMeta(context.Background(), "lobby", next); err != nil {
			t.Fatalf("SetMeta: %v", err)
		}
		expectState(t, r, "lobby", State{Meta: next})
		// A closed group keeps its metadata.
		if err := r.CloseGroup(context.Background(), "lobby"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectState(t, r, "lobby", State{Meta: next, Closed: true})
	})

	t.Run("groups are isolated", func(t *testing.T) {
		r := newRegistry(t, Config{})
		mustJoin(t, r, "lobby", "a", RoleMember, 1)
		mustJoin(t, r, "hall", "a", RoleAdmin, 1)
		if err := r.CloseGroup(context.Background(), "hall"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectState(t, r, "lobby", State{Counts: Counts{Member: 1}})
		expectState(t, r, "hall", State{Closed: true})
	})

	t.Run("a done context changes nothing", func(t *testing.T) {
		r := newRegistry(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := r.Join(ctx, "lobby", "a", RoleMember, 0); err == nil {
			t.Fatal("Join with a canceled context returned no error")
		}
		if err := r.CloseGroup(ctx, "lobby"); err == nil {
			t.Fatal("Close with a canceled context returned no error")
		}
		expectState(t, r, "lobby", State{})
	})

	t.Run("parallel joins fill exactly maxMembers", func(t *testing.T) {
		r := newRegistry(t, Config{})
		const joiners, maxMembers = 100, 10
		var full atomic.Int32
		totals := make(chan int, joiners)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range joiners {
			wg.Go(func() {
				<-start
				c, err := r.Join(context.Background(), "lobby", fmt.Sprintf("c%d", i), RoleMember, maxMembers)
				switch {
				case errors.Is(err, ErrFull):
					full.Add(1)
				case err != nil:
					t.Errorf("Join: %v", err)
				default:
					totals <- c.Total()
				}
			})
		}
		close(start)
		wg.Wait()
		close(totals)
		// Atomic joins see every count from 1 to maxMembers exactly once.
		var seen []int
		for n := range totals {
			seen = append(seen, n)
		}
		slices.Sort(seen)
		want := make([]int, maxMembers)
		for i := range want {
			want[i] = i + 1
		}
		if !slices.Equal(seen, want) || full.Load() != joiners-maxMembers {
			t.Fatalf("joins saw counts %v and %d were refused as full; want %v and %d", seen, full.Load(), want, joiners-maxMembers)
		}
		expectState(t, r, "lobby", State{Counts: Counts{Member: maxMembers}})
	})

	t.Run("no join outlives a concurrent close", func(t *testing.T) {
		r := newRegistry(t, Config{})
		const joiners = 32
		var closed, stop atomic.Bool
		start := make(chan struct{})
		var wg sync.WaitGroup
		// Should Close fail, the joiners still end with the test.
		defer func() {
			stop.Store(true)
			wg.Wait()
		}()
		for i := range joiners {
			wg.Go(func() {
				<-start
				for j := 0; !stop.Load(); j++ {
					after := closed.Load()
					_, err := r.Join(context.Background(), "lobby", fmt.Sprintf("c%d-%d", i, j), RoleMember, 0)
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("Join: %v", err)
						return
					}
					if after {
						t.Errorf("a join begun after Close returned succeeded")
						return
					}
				}
			})
		}
		close(start)
		// Let the joiners in before closing, without sleeping.
		testsvc.WaitFor(t, 5*time.Second, "every joiner", func() bool { return mustState(t, r, "lobby").Counts.Total() >= joiners })
		if err := r.CloseGroup(context.Background(), "lobby"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		closed.Store(true)
		wg.Wait()
		expectState(t, r, "lobby", State{Closed: true})
	})
}
