package caddytest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// caddyBin is the Caddy binary built from ./cmd/caddy once per test run;
// every integration test drives real Caddy processes started from it
// (one process cannot host several Caddies).
var caddyBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "realtime-caddytest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if !isShort() {
		caddyBin = filepath.Join(dir, "caddy")
		args := []string{"build", "-o", caddyBin}
		if os.Getenv("REALTIME_TEST_RACE") != "" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/caddy")...)
		cmd.Dir = ".."
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building caddy from ./cmd/caddy:", err)
			return 1
		}
	}
	return m.Run()
}

func isShort() bool {
	for _, a := range os.Args {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

// instance is one running Caddy process.
type instance struct {
	t    testing.TB
	cmd  *exec.Cmd
	port int
	dir  string
	logs *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort returns a port for a Caddy instance (see testsvc.FreePort).
func freePort(t testing.TB) int { return testsvc.FreePort(t) }

// startCaddy starts Caddy with site, the body of a site block served at
// http://127.0.0.1:<port>. "{PORT}" in site is replaced by the port. The
// process is stopped with SIGTERM at the end of the test.
func startCaddy(t testing.TB, site string) *instance {
	t.Helper()
	return startCaddyWith(t, "", site)
}

// startCaddyWith is startCaddy with extra global options (e.g. the
// realtime app's redis).
func startCaddyWith(t testing.TB, global, site string) *instance {
	t.Helper()
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	// Another process may take the free port between our probe and
	// Caddy's listen: try a few ports before calling it a failure.
	for attempt := 1; ; attempt++ {
		in, err := tryStartCaddy(t, global, site)
		if err == nil {
			return in
		}
		if attempt == 3 || !strings.Contains(in.logs.String(), "address already in use") {
			t.Fatalf("%v\n%s", err, in.logs.String())
		}
	}
}

func tryStartCaddy(t testing.TB, global, site string) (*instance, error) {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{
	admin unix/%s/admin.sock
	persist_config off
	skip_install_trust
	http_port %d
	grace_period 3s
	log {
		output stderr
		level DEBUG
	}
%s
}

http://127.0.0.1:%d {
%s
}
`, dir, port, global, port, strings.ReplaceAll(site, "{PORT}", strconv.Itoa(port)))
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, port: port, dir: dir, logs: &syncBuffer{}, done: make(chan struct{})}
	in.cmd = exec.Command(caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	in.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config", "HOME="+dir)
	in.cmd.Stdout, in.cmd.Stderr = in.logs, in.logs
	if err := in.cmd.Start(); err != nil {
		return in, err
	}
	go func() { in.err = in.cmd.Wait(); close(in.done) }()
	t.Cleanup(func() {
		in.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("caddy logs:\n%s", in.logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-in.done:
			return in, fmt.Errorf("caddy exited at start: %v", in.err)
		default:
		}
		c, err := net.DialTimeout("tcp", in.addr(), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return in, nil
		}
		if time.Now().After(deadline) {
			return in, fmt.Errorf("caddy did not listen on %s within 20s", in.addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (in *instance) addr() string   { return "127.0.0.1:" + strconv.Itoa(in.port) }
func (in *instance) origin() string { return "http://" + in.addr() }
func (in *instance) url(p string) string {
	return "http://" + in.addr() + p
}

// stop sends SIGTERM (Caddy's graceful exit) and waits, killing after timeout.
func (in *instance) stop(timeout time.Duration) {
	select {
	case <-in.done:
		return
	default:
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(timeout):
		_ = in.cmd.Process.Kill()
		<-in.done
	}
}

// apiCall performs an HTTP API request and returns status and body.
func apiCall(t testing.TB, method, url, key, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testsvc.WaitFor(t, timeout, what, cond)
}
