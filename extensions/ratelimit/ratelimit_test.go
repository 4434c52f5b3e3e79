package ratelimit

import (
	"testing"
	"time"
)

func TestConfigWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Config
		want Config
	}{
		{"the zero Config allows 200 per second, 200 at once, no ban", Config{}, Config{Points: 200, Interval: time.Second, Burst: 200}},
		{"burst follows set points", Config{Points: 10}, Config{Points: 10, Interval: time.Second, Burst: 10}},
		{"set values are kept", Config{Points: 5, Interval: time.Minute, Burst: 7, Block: 30 * time.Second}, Config{Points: 5, Interval: time.Minute, Burst: 7, Block: 30 * time.Second}},
		{"negative values count as unset", Config{Points: -1, Interval: -1, Burst: -1, Block: -1}, Config{Points: 200, Interval: time.Second, Burst: 200}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			if got.Now == nil {
				t.Fatal("Now not set")
			}
			if got.Points != tc.want.Points || got.Interval != tc.want.Interval || got.Burst != tc.want.Burst || got.Block != tc.want.Block {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
