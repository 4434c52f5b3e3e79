package testsvc

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RunWithLeakCheck runs a package's tests (call it from TestMain) and fails
// the run when a goroutine running code of that package outlives them by
// more than a few seconds (docs/design.md, conventions §5: whoever starts a goroutine stops
// it). marker identifies the package in stack traces, e.g.
// "extensions/bus.".
func RunWithLeakCheck(m *testing.M, marker string) {
	code := m.Run()
	if code == 0 {
		if leak := LeakedGoroutines(marker, 5*time.Second); leak != "" {
			fmt.Fprintf(os.Stderr, "goroutine leak detected:\n%s\n", leak)
			code = 1
		}
	}
	os.Exit(code)
}

// LeakedGoroutines waits up to d for every goroutine whose stack mentions
// marker to end, and returns the stacks of those that did not.
func LeakedGoroutines(marker string, d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaks []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, marker) && !strings.Contains(g, "LeakedGoroutines") {
				leaks = append(leaks, g)
			}
		}
		if len(leaks) == 0 || time.Now().After(deadline) {
			return strings.Join(leaks, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RedisAddr is the test Redis's host:port: $REALTIME_TEST_REDIS, or
// DefaultRedisAddr.
func RedisAddr() string {
	if a := os.Getenv("REALTIME_TEST_REDIS"); a != "" {
		return a
	}
	return DefaultRedisAddr
}
