package presence

import (
	"testing"
	"time"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            Config
		ttl, interval time.Duration
	}{
		{"the zero Config gets PROTOCOL.md's defaults", Config{}, 90 * time.Second, 30 * time.Second},
		{"a short TTL shortens the default heartbeat to a third of it", Config{TTL: 15 * time.Second}, 15 * time.Second, 5 * time.Second},
		{"a long TTL keeps the default heartbeat", Config{TTL: 10 * time.Minute}, 10 * time.Minute, 30 * time.Second},
		{"a set heartbeat is kept", Config{Heartbeat: time.Second}, 90 * time.Second, time.Second},
		{"negative durations count as unset", Config{TTL: -1, Heartbeat: -1}, 90 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.TTL != tc.ttl || got.Heartbeat != tc.interval || got.Now == nil {
				t.Fatalf("got TTL %v, Heartbeat %v, Now set %v; want %v, %v, true", got.TTL, got.Heartbeat, got.Now != nil, tc.ttl, tc.interval)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{NoChange: "no change", Joined: "joined", Updated: "updated", Left: "left", Kind(9): "unknown"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}
