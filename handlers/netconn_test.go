package handlers

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
)

// A client may send its first frames in the same TCP segment as the
// upgrade request; net/http has them in its reader by the time the
// connection is hijacked, and the small-buffer hijack must hand them on.
// The server's frames (framed by corkConn, not by the library) must parse
// as RFC 6455 text frames: short, 16-bit and 64-bit lengths.
func TestHijackKeepsEarlyBytesAndFramesParse(t *testing.T) {
	g, srv := newTestGateway(t, testConfig())
	addr := srv.Listener.Addr().String()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + DefaultPath + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: " + srv.URL + "\r\n\r\n"
	var out bytes.Buffer
	out.WriteString(req)
	out.Write(maskedText(`{"type":"subscribe","topic":"early","ref":1}`))
	if _, err := nc.Write(out.Bytes()); err != nil { // one write: the frame rides behind the request
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	if f := readText(t, br); !strings.Contains(f, `"type":"welcome"`) {
		t.Fatalf("first frame %q, want welcome", f)
	}
	if f := readText(t, br); f != `{"type":"subscribed","topic":"early","ref":1}` {
		t.Fatalf("frame %q, want the ack of the subscribe sent with the handshake", f)
	}
	for _, n := range []int{10, 300, 70000} {
		data := []byte(`"` + strings.Repeat("x", n) + `"`)
		if _, err := g.Publish(t.Context(), []bus.Message{{Topic: "early", Event: "e", Data: data}}); err != nil {
			t.Fatal(err)
		}
		f := readText(t, br)
		if !strings.Contains(f, string(data)) || !strings.HasPrefix(f, `{"topic":"early","event":"e","data":"`) {
			t.Fatalf("a %d-byte publish arrived as %.80q (%d bytes)", n, f, len(f))
		}
	}
}

// maskedText frames s as a masked client text frame (RFC 6455 §5.2).
func maskedText(s string) []byte {
	key := [4]byte{1, 2, 3, 4}
	b := []byte{0x81, 0x80 | byte(len(s))}
	b = append(b, key[:]...)
	for i := range len(s) {
		b = append(b, s[i]^key[i%4])
	}
	return b
}

// readText reads one unfragmented, unmasked text frame.
func readText(t *testing.T, r io.Reader) string {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("reading a frame header: %v", err)
	}
	if h[0] != 0x81 || h[1]&0x80 != 0 {
		t.Fatalf("frame header % x: want an unmasked, final text frame", h)
	}
	n := int(h[1])
	switch n {
	case 126:
		var l [2]byte
		_, _ = io.ReadFull(r, l[:])
		n = int(l[0])<<8 | int(l[1])
	case 127:
		var l [8]byte
		_, _ = io.ReadFull(r, l[:])
		n = 0
		for _, c := range l {
			n = n<<8 | int(c)
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatalf("reading a %d-byte payload: %v", n, err)
	}
	return string(p)
}
