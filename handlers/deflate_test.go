package handlers

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/bus"
)

// deflateClient completes a handshake offering permessage-deflate as
// browsers do, over plain TCP, so the test sees frames as they are on the
// wire. It returns the connection, a reader at the first frame and the
// extension the gateway answered.
func deflateClient(t testing.TB, srv *httptest.Server) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	addr := srv.Listener.Addr().String()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + DefaultPath + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" +
		"Origin: " + srv.URL + "\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return nc, br, resp.Header.Get("Sec-WebSocket-Extensions")
}

// dialDeflate connects a coder/websocket client offering permessage-deflate
// and reads its welcome. It is closed at cleanup.
func dialDeflate(t testing.TB, srv *httptest.Server) *testClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, srv.URL+DefaultPath, &websocket.DialOptions{
		HTTPHeader:      http.Header{"Origin": {srv.URL}},
		CompressionMode: websocket.CompressionNoContextTakeover,
	})
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(4 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	c := &testClient{t: t, ws: ws}
	c.id = c.read(ctx)[0].SessionID
	return c
}

// rawFrame is one server frame as it came: its RSV1 bit and its payload,
// inflated when RSV1 is set.
type rawFrame struct {
	rsv1    bool
	wireLen int
	payload []byte
}

func readRawFrame(t testing.TB, br *bufio.Reader) rawFrame {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatalf("reading a frame header: %v", err)
	}
	if h[0]&0x0f != 1 || h[0]&0x80 == 0 {
		t.Fatalf("frame header %#x: want a final text frame", h[0])
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		_, _ = io.ReadFull(br, b[:])
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, _ = io.ReadFull(br, b[:])
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	f := rawFrame{rsv1: h[0]&0x40 != 0, wireLen: n, payload: p}
	if f.rsv1 {
		// RFC 7692 §7.2.2: append the tail the sender removed, inflate.
		r := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader(deflateTail)))
		out, err := io.ReadAll(r)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("inflating a frame: %v", err)
		}
		f.payload = out
	}
	return f
}

// writeMaskedText sends one masked, uncompressed client text frame.
func writeMaskedText(t testing.TB, nc net.Conn, p []byte) {
	t.Helper()
	b := []byte{0x81}
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	default:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	}
	b = append(b, 0, 0, 0, 0) // a zero mask leaves the payload as it is
	b = append(b, p...)
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
}

// jsonPayload is the kind of data a dashboard or todo list publishes.
func jsonPayload(size int) json.RawMessage {
	var b strings.Builder
	b.WriteString(`[`)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"item-%d","title":"Water the plants %d","done":%v,"owner":{"id":"u%d","name":"User %d"},"updatedAt":"2026-12-08T01:%02d:00Z"}`, i, i, i%3 == 0, i%7, i%7, i%60)
	}
	b.WriteString(`]`)
	return json.RawMessage(b.String())
}

// Subscribers that negotiated compression get the publish with RSV1 set,
// compressed once for all of them; a client that did not offer it gets the
// same envelope uncompressed; frames under min_size stay uncompressed.
func TestCompressionOncePerPublish(t *testing.T) {
	cfg := testConfig()
	cfg.Compression = &CompressionConfig{MinSize: 512}
	g, srv := newTestGateway(t, cfg)

	type peer struct {
		nc net.Conn
		br *bufio.Reader
	}
	var peers []peer
	for i := 0; i < 3; i++ {
		nc, br, ext := deflateClient(t, srv)
		if ext != "permessage-deflate; client_no_context_takeover; server_no_context_takeover" {
			t.Fatalf("the gateway answered the extension %q", ext)
		}
		if f := readRawFrame(t, br); f.rsv1 || !bytes.Contains(f.payload, []byte(`"welcome"`)) {
			t.Fatalf("welcome: %+v", f)
		}
		writeMaskedText(t, nc, []byte(`{"type":"subscribe","topic":"todos","ref":1}`))
		if f := readRawFrame(t, br); f.rsv1 || string(f.payload) != `{"type":"subscribed","topic":"todos","ref":1}` {
			t.Fatalf("a short ack must stay uncompressed: rsv1 %v %s", f.rsv1, f.payload)
		}
		peers = append(peers, peer{nc, br})
	}
	plain := dialClient(t, srv)
	plain.subscribe("todos")

	data := jsonPayload(2048)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := g.settings().deflate.runs.Load()
	if _, err := g.Publish(ctx, []bus.Message{{Topic: "todos", Event: "updated", Data: data}}); err != nil {
		t.Fatal(err)
	}
	want := `{"topic":"todos","event":"updated","data":` + string(data) + `,"seq":1}`
	for i, p := range peers {
		f := readRawFrame(t, p.br)
		if !f.rsv1 {
			t.Fatalf("peer %d: the 2 KiB publish came uncompressed", i)
		}
		if string(f.payload) != want {
			t.Fatalf("peer %d: inflated %q, want %q", i, f.payload, want)
		}
		if f.wireLen*3 > len(want) {
			t.Errorf("peer %d: %d bytes on the wire for %d: not even 3x smaller", i, f.wireLen, len(want))
		}
	}
	got := plain.read(ctx)
	if len(got) != 1 || string(got[0].Data) != string(data) {
		t.Fatalf("the client without compression got %+v", got)
	}
	if n := g.settings().deflate.runs.Load() - before; n != 1 {
		t.Fatalf("the publish was compressed %d times for 3 subscribers, want once", n)
	}
}

// A burst to a batch-capable compressed client: large envelopes go one
// per compressed frame, small ones are still coalesced into batch frames,
// and every envelope arrives once, in order.
func TestCompressionBurstKeepsOrder(t *testing.T) {
	cfg := testConfig()
	cfg.Compression = &CompressionConfig{MinSize: 300}
	g, srv := newTestGateway(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := dialDeflate(t, srv)
	c.write(ctx, `{"type":"hello","caps":["batch"]}`)
	c.subscribe("mix")
	if c.serverConn(g).deflate == nil {
		t.Fatal("the library client offered permessage-deflate, but the connection does not compress")
	}
	var msgs []bus.Message
	for i := 0; i < 60; i++ {
		d := json.RawMessage(fmt.Sprint(i))
		if i%3 == 0 {
			d = jsonPayload(600)
		}
		msgs = append(msgs, bus.Message{Topic: "mix", Event: fmt.Sprint(i), Data: d})
	}
	for i := range msgs {
		if _, err := g.Publish(ctx, msgs[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < len(msgs); {
		for _, f := range c.read(ctx) {
			if f.Event != fmt.Sprint(i) || f.Seq != uint64(i+1) || string(f.Data) != string(msgs[i].Data) {
				t.Fatalf("envelope %d: got %s seq %d", i, f.Event, f.Seq)
			}
			i++
		}
	}
}

// A compressed client message that inflates past max_payload closes the
// connection with 1009, however small it was on the wire.
func TestCompressionInflatedPayloadIsBounded(t *testing.T) {
	cfg := testConfig()
	cfg.Compression = &CompressionConfig{}
	cfg.MaxPayload = 64 << 10
	_, srv := newTestGateway(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := dialDeflate(t, srv)
	// A small compressed message is inflated and handled.
	c.subscribe("ok")
	bomb := `{"type":"subscribe","topic":"` + strings.Repeat("a", 1<<20) + `"}`
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(bomb)); err != nil {
		t.Fatal(err)
	}
	var err error
	for {
		if _, _, err = c.ws.Read(ctx); err != nil {
			break
		}
	}
	if code := websocket.CloseStatus(err); code != websocket.StatusMessageTooBig {
		t.Fatalf("a 1 MiB inflated message over a 64 KiB max_payload: %v (code %d), want 1009", err, code)
	}
}

// Without compression configured, an offer of permessage-deflate is not
// taken up.
func TestCompressionOffByDefault(t *testing.T) {
	_, srv := newTestGateway(t, testConfig())
	_, br, ext := deflateClient(t, srv)
	if ext != "" {
		t.Fatalf("compression off answered the extension %q", ext)
	}
	if f := readRawFrame(t, br); f.rsv1 {
		t.Fatal("welcome came compressed with compression off")
	}
}

// BenchmarkDeflate2KiB is one compression of a 2 KiB JSON event: what a
// publish costs once, whatever its number of subscribers.
func BenchmarkDeflate2KiB(b *testing.B) {
	for _, level := range []int{1, 6} {
		b.Run(fmt.Sprintf("level%d", level), func(b *testing.B) {
			d := newDeflater(CompressionConfig{Level: level, MinSize: 1})
			frame := []byte(`{"topic":"todos","event":"updated","data":` + string(jsonPayload(2048)) + `,"seq":1}`)
			var z []byte
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for range b.N {
				z = d.compress(frame)
			}
			b.ReportMetric(float64(len(z))/float64(len(frame)), "ratio")
		})
	}
}

// BenchmarkDeflateShared is one subscriber's lookup of a frame compressed
// already: what every compressed delivery after the first costs.
func BenchmarkDeflateShared(b *testing.B) {
	d := newDeflater(CompressionConfig{Level: 1, MinSize: 256})
	frame := []byte(`{"topic":"todos","event":"updated","data":` + string(jsonPayload(2048)) + `,"seq":1}`)
	d.shared(frame)
	b.ReportAllocs()
	for range b.N {
		if d.shared(frame) == nil {
			b.Fatal("not compressed")
		}
	}
}
