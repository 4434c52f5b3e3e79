//go:build linux

package benchtool

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestEpStateParsesFramesAcrossReads(t *testing.T) {
	small := []byte(`{"topic":"fanout","event":"tick","data":{"ts":1,"pad":"x"},"seq":1}`)
	large := bytes.Repeat([]byte("L"), 70000)
	var stream []byte
	stream = append(stream, serverFrame(opText, true, small)...)
	stream = append(stream, serverFrame(opPing, true, []byte("p"))...)
	stream = append(stream, serverFrame(opText, true, large)...)
	stream = append(stream, serverFrame(opText, false, []byte("ab"))...)
	stream = append(stream, serverFrame(opContinuation, true, []byte("cd"))...)
	stream = append(stream, serverFrame(opClose, true, []byte{0x03, 0xe8})...)
	ws, rc := newTestConn(nil)
	ws.fd = -1
	var s epState
	s.buf = make([]byte, readBufSize)
	var got []string
	// Feed the stream in 1000-byte reads, growing the buffer as readOnce does.
	var err error
	for off := 0; off < len(stream) && err == nil; {
		if s.r == s.w {
			s.r, s.w = 0, 0
		} else if s.w == len(s.buf) || s.need > len(s.buf)-s.r {
			s.w = copy(s.buf, s.buf[s.r:s.w])
			s.r = 0
			if s.need > len(s.buf) {
				nb := make([]byte, s.need)
				copy(nb, s.buf[:s.w])
				s.buf = nb
			}
		}
		n := copy(s.buf[s.w:], stream[off:min(off+1000, len(stream))])
		s.w += n
		off += n
		for {
			var msg []byte
			var ok bool
			msg, ok, err = s.message(ws)
			if err != nil || !ok {
				break
			}
			got = append(got, string(msg))
		}
	}
	if err != errClosed {
		t.Fatalf("ended with %v, want errClosed", err)
	}
	if len(got) != 3 || got[0] != string(small) || got[1] != string(large) || got[2] != "abcd" {
		t.Fatalf("got %d messages", len(got))
	}
	ops, payloads := unmask(t, rc.w.Bytes())
	if len(ops) != 2 || ops[0] != opPong || payloads[0] != "p" || ops[1] != opClose {
		t.Fatalf("client wrote %v %q", ops, payloads)
	}
}

// The epoll reader end to end: deliveries counted, server pings answered,
// and the bench's close seen by the server.
func TestEpollReaderAgainstCoderWebsocket(t *testing.T) {
	serverDone := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			serverDone <- err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","sessionId":"s1"}`))
		closed := make(chan error, 1)
		go func() {
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					closed <- err
					return
				}
			}
		}()
		now := time.Now().UnixNano()
		env := func(ts int64) string {
			return `{"topic":"t","event":"e","data":` + string(payload(nil, ts, 100)) + `,"seq":1}`
		}
		_ = ws.Write(ctx, websocket.MessageText, []byte(env(now)))
		if err := ws.Ping(ctx); err != nil {
			serverDone <- err
			return
		}
		_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"batch","events":[`+env(now)+","+env(now)+`]}`))
		_ = ws.Write(ctx, websocket.MessageText, []byte(strings.Repeat(" ", 9000)+env(now))) // bigger than the read buffer
		serverDone <- <-closed
	}))
	defer srv.Close()
	cfg := &config{reader: "epoll", n: 1, quiet: true, timeout: 5 * time.Second,
		targets: []string{"ws://" + strings.TrimPrefix(srv.URL, "http://") + "/ws"}}
	targets, err := buildTargets(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRunner(cfg, realtimeProto{}, targets)
	if err != nil {
		t.Fatal(err)
	}
	defer r.progress.close()
	c := r.newClient(0, nil)
	if err := r.dialOpen(c); err != nil {
		t.Fatal(err)
	}
	r.startReading(c)
	deadline := time.Now().Add(5 * time.Second)
	for r.deliveredTotal() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.deliveredTotal(); got != 4 {
		t.Fatalf("delivered %d, want 4", got)
	}
	if s := r.hist.Load().summary(); s.Count != 4 || s.Max > 5000 {
		t.Fatalf("latency summary %+v", s)
	}
	r.closeAll([]*client{c})
	if r.dropped.Load() != 0 || r.alive.Load() != 0 {
		t.Fatalf("dropped %d, alive %d", r.dropped.Load(), r.alive.Load())
	}
	select {
	case err := <-serverDone:
		if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Fatalf("server saw %v, want a 1000 close", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not see the close")
	}
}
