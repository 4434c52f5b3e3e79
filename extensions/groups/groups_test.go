package groups

import (
	"testing"
	"time"
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
		{"set values are kept", Config{TTL: time.Hour, Heartbeat: time.Minute}, time.Hour, time.Minute},
		{"negative durations count as unset", Config{TTL: -1, Heartbeat: -1}, 120 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.TTL != tc.ttl || got.Heartbeat != tc.heartbeat || got.Now == nil {
				t.Fatalf("got TTL %v, Heartbeat %v, Now set %v; want %v, %v, true", got.TTL, got.Heartbeat, got.Now != nil, tc.ttl, tc.heartbeat)
			}
		})
	}
}
