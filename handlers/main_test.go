package handlers

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
)

// TestMain fails the package when goroutines outlive the tests, in the style
// of coder/websocket's main_test.go: every test closes its gateways, servers
// and clients, so the count must come back to where it started. Closing
// takes a moment to unwind (close handshakes, the hook transport's idle
// connections, net/http's per-connection goroutines), hence the wait.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 && !goroutinesSettle(before, 5*time.Second) {
		fmt.Fprintf(os.Stderr, "goroutine leak detected: %d goroutines before the tests, %d after\n", before, runtime.NumGoroutine())
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		code = 1
	}
	os.Exit(code)
}

// goroutinesSettle waits until at most want goroutines run, closing the
// default transport's idle connections (left by plain HTTP requests of the
// tests) while it waits.
func goroutinesSettle(want int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if t, ok := http.DefaultTransport.(*http.Transport); ok {
			t.CloseIdleConnections()
		}
		if runtime.NumGoroutine() <= want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling, as waitFor does
	}
}

// testConfig is the base config of these tests: no shutdown spread (closing
// a gateway is immediate) and no per-IP upgrade limit (every client dials
// from 127.0.0.1).
func testConfig() Config {
	return Config{ShutdownSpread: -1, UpgradeRate: -1}
}

var gatewaySerial atomic.Int64

// newTestGateway builds a gateway mounted on an httptest server. Cleanup
// closes the gateway, then the server; clients dialled later are cleaned up
// first.
func newTestGateway(t testing.TB, cfg Config) (*Gateway, *httptest.Server) {
	t.Helper()
	if cfg.Name == "" {
		// A name of its own keeps each test's metric children apart.
		cfg.Name = fmt.Sprintf("test-%d", gatewaySerial.Add(1))
	}
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatalf("building the gateway: %v", err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.ServeHTTP(w, r) {
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := g.Close(ctx); err != nil {
			t.Errorf("closing the gateway: %v", err)
		}
		srv.Close()
	})
	return g, srv
}

// inFrame is any frame the gateway sends, decoded loosely.
type inFrame struct {
	Type      string          `json:"type"`
	SessionID string          `json:"sessionId"`
	Topic     string          `json:"topic"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Seq       uint64          `json:"seq"`
	Ref       json.RawMessage `json:"ref"`
	Events    []inFrame       `json:"events"`
}

// testClient is a coder/websocket client of a test gateway.
type testClient struct {
	t   testing.TB
	ws  *websocket.Conn
	id  string // the welcome session id, also the server's connection id
	ref int
}

// dialClient connects to srv's gateway, reads welcome and, with caps given,
// sends hello (making the connection current). The client is closed at
// cleanup.
func dialClient(t testing.TB, srv *httptest.Server, caps ...string) *testClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, srv.URL+DefaultPath, &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {srv.URL}},
	})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dialling the gateway: %v (status %d)", err, status)
	}
	ws.SetReadLimit(4 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	c := &testClient{t: t, ws: ws}
	f := c.read(ctx)
	if len(f) != 1 || f[0].Type != "welcome" || f[0].SessionID == "" {
		t.Fatalf("first frame is not welcome: %+v", f)
	}
	c.id = f[0].SessionID
	if caps != nil {
		b, _ := json.Marshal(map[string]any{"type": "hello", "caps": caps})
		c.write(ctx, string(b))
	}
	return c
}

func (c *testClient) write(ctx context.Context, msg string) {
	c.t.Helper()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("writing %s: %v", msg, err)
	}
}

// read reads one frame; a batch frame comes back as its envelopes.
func (c *testClient) read(ctx context.Context) []inFrame {
	c.t.Helper()
	fs, err := c.tryRead(ctx)
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return fs
}

// tryRead is read for goroutines other than the test's: it returns the error
// instead of failing.
func (c *testClient) tryRead(ctx context.Context) ([]inFrame, error) {
	typ, b, err := c.ws.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageText {
		return nil, fmt.Errorf("got a binary frame: %q", b)
	}
	var f inFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("frame %q is not json: %v", b, err)
	}
	if f.Type == "batch" {
		if len(f.Events) < 2 {
			return nil, fmt.Errorf("batch frame with %d events (a batch of one should be plain): %s", len(f.Events), b)
		}
		return f.Events, nil
	}
	return []inFrame{f}, nil
}

// subscribe subscribes with a ref and waits for the ack, so the connection
// is attached to topic when it returns. Nothing else may arrive meanwhile.
func (c *testClient) subscribe(topic string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.ref++
	c.write(ctx, fmt.Sprintf(`{"type":"subscribe","topic":%q,"ref":%d}`, topic, c.ref))
	for {
		for _, f := range c.read(ctx) {
			if f.Type == "subscribed" && f.Topic == topic && string(f.Ref) == fmt.Sprint(c.ref) {
				return
			}
			c.t.Fatalf("waiting for the subscribe ack of %q, got %+v", topic, f)
		}
	}
}

// serverConn returns the gateway's side of the client's connection.
func (c *testClient) serverConn(g *Gateway) *conn {
	c.t.Helper()
	sc := g.conns.get(c.id)
	if sc == nil {
		c.t.Fatalf("connection %s is not registered", c.id)
	}
	return sc
}

// rawClient completes a WebSocket handshake over plain TCP and then does
// nothing: it never reads, never answers a ping or a close. It is closed at
// cleanup.
func rawClient(t testing.TB, srv *httptest.Server) net.Conn {
	t.Helper()
	addr := srv.Listener.Addr().String()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialling %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET " + DefaultPath + " HTTP/1.1\r\n" +
		"Host: " + addr + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n" +
		"Origin: " + srv.URL + "\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatalf("writing the handshake: %v", err)
	}
	// Only the status line and headers are read; welcome stays unread.
	br := bufio.NewReaderSize(nc, 64)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the handshake response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answered %s, want 101", resp.Status)
	}
	_ = nc.SetDeadline(time.Time{})
	return nc
}

// newMemConn returns a connection without a socket, for driving the hub
// directly. writing is set so enqueue never starts a write loop: frames stay
// in the queue for memFrames to read. The gateway needs a MaxBackpressure
// that the test never reaches, as the close policy would need a socket.
func newMemConn(g *Gateway, batch bool) *conn {
	c := &conn{g: g, id: uuid.NewString(), writing: true}
	c.batchCap.Store(batch)
	return c
}

// memFrames returns the frames queued on a socketless connection.
func memFrames(c *conn) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([][]byte, len(c.queue))
	for i, f := range c.queue {
		out[i] = f.b
	}
	return out
}

// queuedBytes reads a connection's queued byte count under its lock.
func queuedBytes(c *conn) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued
}

func isClosed(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// decodeFrame splits an outbound frame into its envelopes.
func decodeFrame(t testing.TB, b []byte) []inFrame {
	t.Helper()
	var f inFrame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %q is not json: %v", b, err)
	}
	if f.Type == "batch" {
		return f.Events
	}
	return []inFrame{f}
}

func isBatchFrame(b []byte) bool { return strings.HasPrefix(string(b), `{"type":"batch"`) }
