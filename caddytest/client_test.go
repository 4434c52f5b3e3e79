package caddytest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsClient is a test WebSocket client that reads every frame into a channel.
type wsClient struct {
	t      testing.TB
	c      *websocket.Conn
	frames chan []byte
	closed chan struct{}
	err    error // the read error that ended the connection

	// pending holds the rest of a batch frame that expect split (see there).
	pending []string
}

type dialOpts struct {
	origin   string // "" sends no Origin
	header   http.Header
	path     string
	compress bool // offer permessage-deflate
}

// dial connects to in's WebSocket endpoint with the instance's own origin.
func dial(t testing.TB, in *instance) *wsClient {
	t.Helper()
	return dialWith(t, in, dialOpts{origin: in.origin()})
}

func dialWith(t testing.TB, in *instance, o dialOpts) *wsClient {
	t.Helper()
	c, resp, err := tryDial(in, o)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	w := &wsClient{t: t, c: c, frames: make(chan []byte, 4096), closed: make(chan struct{})}
	c.SetReadLimit(4 << 20)
	go func() {
		defer close(w.closed)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				w.err = err
				return
			}
			w.frames <- b
		}
	}()
	t.Cleanup(func() { c.CloseNow() })
	return w
}

func tryDial(in *instance, o dialOpts) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	for k, v := range o.header {
		h[k] = v
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	path := o.path
	if path == "" {
		path = "/ws"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPHeader: h}
	if o.compress {
		opts.CompressionMode = websocket.CompressionNoContextTakeover
	}
	return websocket.Dial(ctx, "ws://"+in.addr()+path, opts)
}

// send writes a text frame.
func (w *wsClient) send(s string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		w.t.Fatalf("write %s: %v", s, err)
	}
}

// nextRaw returns the next frame as the gateway sent it, failing after
// timeout.
func (w *wsClient) nextRaw(timeout time.Duration) string {
	w.t.Helper()
	if len(w.pending) > 0 {
		f := w.pending[0]
		w.pending = w.pending[1:]
		return f
	}
	select {
	case b := <-w.frames:
		return string(b)
	case <-w.closed:
		// drain what arrived before the close
		select {
		case b := <-w.frames:
			return string(b)
		default:
		}
		w.t.Fatalf("connection closed while waiting for a frame: %v", w.err)
	case <-time.After(timeout):
		w.t.Fatalf("no frame within %s", timeout)
	}
	return ""
}

// next returns the next frame, a batch frame's envelopes one by one: the
// gateway may put envelopes queued together for a client with the batch
// cap into one batch frame (docs/protocol.md §7.2), and a client handles each
// element as a frame of its own. Tests of batch framing itself use nextRaw.
func (w *wsClient) next(timeout time.Duration) string {
	w.t.Helper()
	es := elements([]byte(w.nextRaw(timeout)))
	w.pending = append(w.pending, es[1:]...)
	return es[0]
}

// elements returns a batch frame's envelopes, or the frame itself.
func elements(raw []byte) []string {
	var b struct{ Events []json.RawMessage }
	if !strings.HasPrefix(string(raw), `{"type":"batch","events":[`) || json.Unmarshal(raw, &b) != nil || len(b.Events) == 0 {
		return []string{string(raw)}
	}
	out := make([]string, len(b.Events))
	for i, e := range b.Events {
		out[i] = string(e)
	}
	return out
}

// expect asserts the next frame is exactly want: a batch frame when want
// is one, else the next frame or batch element (see next).
func (w *wsClient) expect(want string) {
	w.t.Helper()
	var got string
	if strings.HasPrefix(want, `{"type":"batch"`) {
		got = w.nextRaw(3 * time.Second)
	} else {
		got = w.next(3 * time.Second)
	}
	if got != want {
		w.t.Fatalf("frame:\n got  %s\n want %s", got, want)
	}
}

// welcome reads the welcome frame and returns the session id.
func (w *wsClient) welcome() string {
	w.t.Helper()
	var f struct {
		Type      string `json:"type"`
		SessionID string `json:"sessionId"`
	}
	raw := w.next(3 * time.Second)
	if err := json.Unmarshal([]byte(raw), &f); err != nil || f.Type != "welcome" {
		w.t.Fatalf("first frame %s is not a welcome", raw)
	}
	return f.SessionID
}

// quiet asserts no frame arrives within d.
func (w *wsClient) quiet(d time.Duration) {
	w.t.Helper()
	if len(w.pending) > 0 {
		w.t.Fatalf("unexpected frame %s", w.pending[0])
	}
	select {
	case b := <-w.frames:
		w.t.Fatalf("unexpected frame %s", b)
	case <-time.After(d):
	}
}

// closeStatus waits for the connection to end and returns the close code
// the server sent.
func (w *wsClient) closeStatus(timeout time.Duration) websocket.StatusCode {
	w.t.Helper()
	select {
	case <-w.closed:
	case <-time.After(timeout):
		w.t.Fatalf("connection still open after %s", timeout)
	}
	var ce websocket.CloseError
	if errors.As(w.err, &ce) {
		return ce.Code
	}
	return websocket.StatusCode(-1)
}

func asClose(err error, ce *websocket.CloseError) bool { return errors.As(err, ce) }
