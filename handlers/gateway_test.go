package handlers

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// readUntilClose reads on a goroutine until the connection ends and returns
// the error that ended it.
func readUntilClose(c *testClient) <-chan error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for {
			if _, _, err := c.ws.Read(ctx); err != nil {
				ch <- err
				return
			}
		}
	}()
	return ch
}

// wantShutdownClose fails unless err is the close of §2.7.
func wantShutdownClose(t testing.TB, err error) {
	t.Helper()
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || ce.Reason != "Server shutting down" {
		t.Fatalf("connection ended with %v, want close 1001 \"Server shutting down\"", err)
	}
}

// upgradeStatus attempts an upgrade with plain HTTP and returns the response.
func upgradeStatus(t testing.TB, srv *httptest.Server) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+DefaultPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Origin", srv.URL)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("upgrade request: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestGatewayClose checks graceful shutdown (§2.7, §9 item 36): every
// connection gets 1001 "Server shutting down", Close returns, a second
// Close is a no-op, and later upgrades get 503 with Retry-After.
func TestGatewayClose(t *testing.T) {
	tests := []struct {
		name   string
		spread time.Duration
	}{
		{"without a spread every connection is closed with 1001 at once", -1},
		{"with a spread every connection is still closed with 1001", 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.ShutdownSpread = tt.spread
			g, srv := newTestGateway(t, cfg)
			var ends []<-chan error
			for i := range 4 {
				var caps []string
				if i%2 == 0 {
					caps = []string{"batch"}
				}
				ends = append(ends, readUntilClose(dialClient(t, srv, caps...)))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := g.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			for _, end := range ends {
				wantShutdownClose(t, <-end)
			}
			if n := g.conns.count(); n != 0 {
				t.Fatalf("%d connections left after Close", n)
			}
			done, stop := context.WithCancel(context.Background())
			stop()
			if err := g.Close(done); err != nil {
				t.Fatalf("a second Close, with its context already over, returned %v", err)
			}
			resp := upgradeStatus(t, srv)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("an upgrade after Close got %s with Retry-After %q, want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
			}
		})
	}
}

// TestGatewayCloseWithExpiredContextLeavesNoGoroutines closes more
// connections than Close closes concurrently (256), all of them clients
// that never answer the close handshake, with a deadline that ends first.
// Close returns the deadline's error, drops every connection, and every
// goroutine of the gateway ends.
func TestGatewayCloseWithExpiredContextLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	g, srv := newTestGateway(t, testConfig())
	const n = 300
	for range n {
		rawClient(t, srv)
	}
	testsvc.WaitFor(t, 10*time.Second, "every connection", func() bool { return g.conns.count() == n })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := g.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close returned %v, want the deadline's error", err)
	}
	testsvc.WaitFor(t, 10*time.Second, "every connection to close", func() bool { return g.conns.count() == 0 })
	srv.Close()
	if !goroutinesSettle(before, 10*time.Second) {
		var dump strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
		t.Fatalf("%d goroutines before the gateway, %d after it closed:\n%s", before, runtime.NumGoroutine(), dump.String())
	}
}

// TestGatewayCloseRefusesUpgradesWaitingForAuth starts Close while an
// upgrade waits for the auth hook. When the hook answers during the
// shutdown spread, the upgrade must be refused, not accepted and then
// dropped without a close frame once Close finishes (§2.1 check 2, §2.7).
func TestGatewayCloseRefusesUpgradesWaitingForAuth(t *testing.T) {
	var calls atomic.Int32
	arrived := make(chan struct{})
	release := make(chan struct{})
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 3 { // the upgrade under test; the first two pass at once
			close(arrived)
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"u1"}`)
	}))
	t.Cleanup(auth.Close)
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	cfg := testConfig()
	cfg.Auth = &HookConfig{URL: auth.URL}
	cfg.ShutdownSpread = 2 * time.Second // two connections: the second closes 1 s in
	g, srv := newTestGateway(t, cfg)
	ends := []<-chan error{readUntilClose(dialClient(t, srv)), readUntilClose(dialClient(t, srv))}

	type dialed struct {
		ws   *websocket.Conn
		resp *http.Response
		err  error
	}
	late := make(chan dialed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ws, resp, err := websocket.Dial(ctx, srv.URL+DefaultPath, &websocket.DialOptions{
			HTTPHeader: http.Header{"Origin": {srv.URL}},
		})
		late <- dialed{ws, resp, err}
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the auth hook never saw the third upgrade")
	}
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		closed <- g.Close(ctx)
	}()
	testsvc.WaitFor(t, 5*time.Second, "draining", g.draining.Load)
	releaseOnce.Do(func() { close(release) })

	d := <-late
	if d.err != nil {
		if d.resp == nil || d.resp.StatusCode < 500 {
			t.Fatalf("the upgrade failed with %v, want a 5xx refusal", d.err)
		}
	} else {
		t.Cleanup(func() { d.ws.CloseNow() })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		for err == nil {
			_, _, err = d.ws.Read(ctx)
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway {
			t.Fatalf("an upgrade accepted during shutdown ended with %v, want a 503 refusal or close 1001", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, end := range ends {
		wantShutdownClose(t, <-end)
	}
}
