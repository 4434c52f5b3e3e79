package handlers

import (
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/cursor"
	"github.com/caddy-realtime/realtime/extensions/groups"
	"github.com/caddy-realtime/realtime/extensions/presence"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// A New that fails after building backends must stop them: the Redis
// presence, cursor and group backends each run loops, which would
// otherwise outlive the failed gateway (and a failed Caddy start or
// reload) for good.
func TestNewReleasesBackendsWhenABuildStepFails(t *testing.T) {
	errBuild := errors.New("build step refused by the test")
	for _, tc := range []struct {
		name          string
		busFails      bool
		groupFails    bool
		presenceFails bool // the second presence rule's backend
		wantBuilt     map[string]int
	}{
		{name: "the bus fails after every extension and notify listener is built", busFails: true,
			wantBuilt: map[string]int{"presence": 2, "cursor": 1, "groups": 1}},
		{name: "the group backend fails after presence and cursors are built", groupFails: true,
			wantBuilt: map[string]int{"presence": 2, "cursor": 1}},
		{name: "the second presence backend fails after the first is built", presenceFails: true,
			wantBuilt: map[string]int{"presence": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, prefix := testsvc.Redis(t)
			var serial int
			id := func(kind string) string {
				serial++
				return fmt.Sprintf("new-fails-%s%d", kind, serial)
			}
			built := map[string]int{}
			opts := Options{Backends: Backends{
				Presence: func(c presence.Config) (presence.Tracker, error) {
					if tc.presenceFails && built["presence"] == 1 {
						return nil, errBuild
					}
					built["presence"]++
					return presence.NewRedis(client, presence.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: id("p")})
				},
				Cursor: func(c cursor.Config) (cursor.Tracker, error) {
					built["cursor"]++
					return cursor.NewRedis(client, cursor.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: id("c")})
				},
				Groups: func(c groups.Config) (groups.Registry, error) {
					if tc.groupFails {
						return nil, errBuild
					}
					built["groups"]++
					return groups.NewRedis(client, groups.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: id("g")})
				},
			}}
			if tc.busFails {
				opts.NewBus = func(BusHooks) (bus.Bus, error) { return nil, errBuild }
			}
			cfg := testConfig()
			cfg.Name = fmt.Sprintf("test-%d", gatewaySerial.Add(1))
			cfg.Presence = []PresenceConfig{{Topics: "room.*"}, {Topics: "lobby"}}
			cfg.Cursors = []CursorConfig{{Topics: "canvas.*"}}
			cfg.Groups = []GroupConfig{{Name: "team"}}
			cfg.Notify = []NotifyConfig{{Channel: "new_fails", ConnString: testsvc.PostgresURL()}}

			g, err := New(cfg, opts)
			if !errors.Is(err, errBuild) {
				t.Fatalf("New = %v, %v; want the build step's error", g, err)
			}
			if !maps.Equal(built, tc.wantBuilt) {
				t.Fatalf("backends built before the failure: %v, want %v", built, tc.wantBuilt)
			}
			for _, marker := range []string{"extensions/presence.", "extensions/cursor.", "extensions/groups.", "extensions/notify."} {
				if leak := testsvc.LeakedGoroutines(marker, 5*time.Second); leak != "" {
					t.Errorf("goroutines of %s outlive the failed New:\n%s", marker, leak)
				}
			}
		})
	}
}
