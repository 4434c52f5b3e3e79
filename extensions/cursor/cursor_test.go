package cursor

import (
	"testing"
	"time"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            Config
		throttle, ttl time.Duration
	}{
		{"the zero Config gets PROTOCOL.md's defaults", Config{}, 50 * time.Millisecond, 30 * time.Second},
		{"a throttle below one 60 Hz frame is raised to it", Config{Throttle: time.Millisecond}, 16 * time.Millisecond, 30 * time.Second},
		{"a throttle of exactly 16ms is kept", Config{Throttle: 16 * time.Millisecond}, 16 * time.Millisecond, 30 * time.Second},
		{"set values are kept", Config{Throttle: time.Second, TTL: time.Minute}, time.Second, time.Minute},
		{"negative durations count as unset", Config{Throttle: -1, TTL: -1}, 50 * time.Millisecond, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.Throttle != tc.throttle || got.TTL != tc.ttl || got.Now == nil {
				t.Fatalf("got Throttle %v, TTL %v, Now set %v; want %v, %v, true", got.Throttle, got.TTL, got.Now != nil, tc.throttle, tc.ttl)
			}
		})
	}
}
