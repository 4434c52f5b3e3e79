package benchtool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// serverFrame encodes an unmasked server-to-client frame.
func serverFrame(op byte, fin bool, p []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(p); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, p...)
}

// recordConn is a net.Conn whose writes are kept and whose reads fail.
type recordConn struct {
	net.Conn
	w bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *recordConn) Close() error                     { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }

func newTestConn(stream []byte) (*wsConn, *recordConn) {
	rc := &recordConn{}
	return newWSConn(rc, bytes.NewReader(stream)), rc
}

// unmask decodes the client frames in b (masked, final, short).
func unmask(t *testing.T, b []byte) (ops []byte, payloads []string) {
	t.Helper()
	for len(b) > 0 {
		op := b[0] & 0x0f
		if b[1]&0x80 == 0 {
			t.Fatal("client frame is not masked")
		}
		n, h := int(b[1]&0x7f), 2
		switch n {
		case 126:
			n, h = int(binary.BigEndian.Uint16(b[2:4])), 4
		case 127:
			n, h = int(binary.BigEndian.Uint64(b[2:10])), 10
		}
		mask := b[h : h+4]
		p := make([]byte, n)
		for i := range p {
			p[i] = b[h+4+i] ^ mask[i&3]
		}
		ops, payloads = append(ops, op), append(payloads, string(p))
		b = b[h+4+n:]
	}
	return ops, payloads
}

func TestNextReadsFramesOfEverySize(t *testing.T) {
	small := []byte(`{"topic":"fanout","event":"tick","data":{"ts":1,"pad":"x"},"seq":1}`)
	medium := bytes.Repeat([]byte("m"), 300)        // 16-bit length
	large := bytes.Repeat([]byte("L"), 70000)       // 64-bit length, larger than the bufio buffer
	fit := bytes.Repeat([]byte("f"), readBufSize-4) // 16-bit length, just fits in place
	var stream []byte
	for _, p := range [][]byte{small, medium, large, fit, small} {
		stream = append(stream, serverFrame(opText, true, p)...)
	}
	c, _ := newTestConn(stream)
	for i, want := range [][]byte{small, medium, large, fit, small} {
		got, err := c.next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %d bytes %.20q, want %d bytes", i, len(got), got, len(want))
		}
	}
	if _, err := c.next(); err == nil {
		t.Fatal("read past the end of the stream without an error")
	}
}

func TestNextReassemblesFragmentsAndAnswersPings(t *testing.T) {
	var stream []byte
	stream = append(stream, serverFrame(opText, false, []byte(`{"a":`))...)
	stream = append(stream, serverFrame(opPing, true, []byte("hi"))...) // control frames may interleave
	stream = append(stream, serverFrame(opContinuation, false, bytes.Repeat([]byte(" "), 5000))...)
	stream = append(stream, serverFrame(opContinuation, true, []byte(`1}`))...)
	stream = append(stream, serverFrame(opPong, true, nil)...)
	stream = append(stream, serverFrame(opText, true, []byte(`next`))...)
	stream = append(stream, serverFrame(opClose, true, []byte{0x03, 0xe9, 'b', 'y', 'e'})...)
	c, rc := newTestConn(stream)
	got, err := c.next()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":` + strings.Repeat(" ", 5000) + `1}`; string(got) != want {
		t.Fatalf("reassembled %d bytes, want %d", len(got), len(want))
	}
	if got, err := c.next(); err != nil || string(got) != "next" {
		t.Fatalf("after the fragments: %q, %v", got, err)
	}
	if _, err := c.next(); !errors.Is(err, errClosed) {
		t.Fatalf("close frame: err = %v, want errClosed", err)
	}
	ops, payloads := unmask(t, rc.w.Bytes())
	if len(ops) != 2 || ops[0] != opPong || payloads[0] != "hi" || ops[1] != opClose || payloads[1] != "\x03\xe9" {
		t.Fatalf("client wrote %v %q; want a pong echoing the ping, then a close echoing 1001", ops, payloads)
	}
}

func TestNextRejectsMaskedAndHugeFrames(t *testing.T) {
	masked := []byte{0x81, 0x81, 1, 2, 3, 4, 'x'}
	if _, err := (func() ([]byte, error) { c, _ := newTestConn(masked); return c.next() })(); !errors.Is(err, errMaskedFrame) {
		t.Errorf("masked server frame: err = %v", err)
	}
	huge := []byte{0x81, 127}
	huge = binary.BigEndian.AppendUint64(huge, 1<<40)
	if _, err := (func() ([]byte, error) { c, _ := newTestConn(huge); return c.next() })(); !errors.Is(err, errFrameSize) {
		t.Errorf("2^40-byte frame: err = %v", err)
	}
}

// The client against a real server library: upgrade, masking, server
// pings, large messages, close.
func TestClientAgainstCoderWebsocket(t *testing.T) {
	big := strings.Repeat("b", 200000)
	echoed := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") == "" {
			t.Error("upgrade without Origin")
		}
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			t.Error(err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","sessionId":"s1"}`))
		_ = ws.Write(ctx, websocket.MessageText, []byte(big))
		// Ping needs a reader to see the pong: read the client's frame meanwhile.
		go func() {
			_, p, err := ws.Read(ctx)
			if err == nil {
				echoed <- string(p)
			}
			for err == nil {
				_, _, err = ws.Read(ctx)
			}
		}()
		if err := ws.Ping(ctx); err != nil {
			t.Errorf("ping: %v", err)
		}
		_ = ws.Close(websocket.StatusGoingAway, "Server shutting down")
	}))
	defer srv.Close()
	u, err := parseWSURL("ws://" + strings.TrimPrefix(srv.URL, "http://") + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialWS(u, nil, 5*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	if err := c.writeText([]byte("hello from the client")); err != nil {
		t.Fatal(err)
	}
	msg, err := c.next()
	if err != nil || !bytes.HasPrefix(msg, welcomePrefix) {
		t.Fatalf("welcome: %q, %v", msg, err)
	}
	msg, err = c.next()
	if err != nil || string(msg) != big {
		t.Fatalf("big message: %d bytes, %v", len(msg), err)
	}
	if _, err := c.next(); !errors.Is(err, errClosed) {
		t.Fatalf("after the ping: err = %v, want errClosed", err)
	}
	select {
	case got := <-echoed:
		if got != "hello from the client" {
			t.Fatalf("server read %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not read the client's masked frame")
	}
}

func TestUpgradeRefusalIsReported(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "Too many upgrades", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	u, _ := parseWSURL("ws://" + strings.TrimPrefix(srv.URL, "http://") + "/ws")
	_, err := dialWS(u, nil, 5*time.Second, false)
	var ue *upgradeError
	if !errors.As(err, &ue) || !strings.Contains(ue.status, "429") || ue.body != "Too many upgrades" {
		t.Fatalf("err = %v", err)
	}
}

func TestScanTimestamps(t *testing.T) {
	batch := []byte(`{"type":"batch","events":[` +
		`{"topic":"t","event":"e","data":{"ts":11,"pad":"xx"},"seq":1},` +
		`{"topic":"t","event":"e","data":{"ts":22,"pad":"xx"},"seq":2},` +
		`{"topic":"t","event":"e","data":{"ts":33,"pad":"xx"},"seq":3}]}`)
	var got []int64
	n := scanTimestamps(batch, func(ts int64) { got = append(got, ts) })
	if n != 3 || len(got) != 3 || got[0] != 11 || got[1] != 22 || got[2] != 33 {
		t.Fatalf("batch: %d %v", n, got)
	}
	cent := []byte(`{"push":{"channel":"c","pub":{"data":{"ts":44,"pad":"x"},"offset":1}}}` + "\n" +
		`{"push":{"channel":"c","pub":{"data":{"ts":55,"pad":"x"},"offset":2}}}`)
	got = nil
	scanTimestamps(cent, func(ts int64) { got = append(got, ts) })
	if len(got) != 2 || got[0] != 44 || got[1] != 55 {
		t.Fatalf("centrifugo frame: %v", got)
	}
	if n := scanTimestamps([]byte(`{"type":"heartbeat"}`), func(int64) {}); n != 0 {
		t.Fatalf("heartbeat holds %d timestamps", n)
	}
	var seqs []uint64
	for msg := batch; ; {
		v, rest, ok := scanUint(msg, seqKey)
		if !ok {
			break
		}
		seqs, msg = append(seqs, v), rest
	}
	if len(seqs) != 3 || seqs[2] != 3 {
		t.Fatalf("seqs %v", seqs)
	}
}

func TestPayloadHasTheRequestedSize(t *testing.T) {
	for _, size := range []int{35, 100, 1000} {
		p := payload(nil, time.Now().UnixNano(), size)
		if len(p) != size {
			t.Errorf("payload(%d) is %d bytes: %s", size, len(p), p)
		}
		if n := scanTimestamps(p, func(int64) {}); n != 1 {
			t.Errorf("payload(%d) holds %d timestamps", size, n)
		}
	}
}

func TestCentrifugoPing(t *testing.T) {
	for msg, want := range map[string]bool{
		`{}`: true, "{}\n{\"push\":{}}": true, "{\"push\":{}}\n{}": true, "{\"a\":1}\n{}\n{\"b\":2}": true,
		`{"push":{"channel":"c","pub":{"data":{}}}}`: false, `{"id":1,"connect":{}}`: false,
	} {
		if got := isCentPing([]byte(msg)); got != want {
			t.Errorf("isCentPing(%q) = %v", msg, got)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := new(histogram)
	for i := int64(1); i <= 10000; i++ {
		h.record(int(i), i*int64(time.Microsecond)) // 1µs … 10ms, uniform
	}
	s := h.summary()
	check := func(name string, got, want float64) {
		if got < want*0.98 || got > want*1.02 {
			t.Errorf("%s = %.4fms, want %.4fms ± 2%%", name, got, want)
		}
	}
	check("p50", s.P50, 5)
	check("p90", s.P90, 9)
	check("p99", s.P99, 9.9)
	if s.Count != 10000 || s.Max != 10 {
		t.Errorf("count %d max %v", s.Count, s.Max)
	}
	for _, v := range []int64{0, 1, 63, 64, 65, 1000, 123456789, 1 << 46} {
		b := bucketValue(bucketOf(v))
		if d := float64(b-v) / float64(max(v, 1)); d < -0.016 || d > 0.016 {
			t.Errorf("value %d lands in a bucket of %d", v, b)
		}
	}
}

func TestParseIPRange(t *testing.T) {
	ips, err := parseIPRange("127.0.0.2-127.0.0.5")
	if err != nil || len(ips) != 4 || ips[3].String() != "127.0.0.5" {
		t.Fatalf("%v %v", ips, err)
	}
	for _, bad := range []string{"127.0.0.5-127.0.0.2", "127.0.0.1-127.0.1.2", "nope"} {
		if _, err := parseIPRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// loopReader replays the same bytes forever.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// BenchmarkReadDelivery is the reader's cost per fan-out delivery: parse
// a frame header, find and parse the timestamp of a 100-byte payload,
// record it. It must not allocate.
func BenchmarkReadDelivery(b *testing.B) {
	data := payload(nil, time.Now().UnixNano(), 100)
	env := []byte(`{"topic":"fanout","event":"tick","data":` + string(data) + `,"seq":123456}`)
	frame := serverFrame(opText, true, env)
	c := newWSConn(nil, &loopReader{b: bytes.Repeat(frame, 64)})
	r := &runner{}
	r.hist.Store(new(histogram))
	cl := &client{shard: &r.delivered[0]}
	cl.record = func(ts int64) {
		r.hist.Load().record(cl.id, cl.now-ts)
		cl.shard.n.Add(1)
	}
	p := realtimeProto{}
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	var reads uint64
	for b.Loop() {
		msg, err := c.next()
		if err != nil {
			b.Fatal(err)
		}
		if n := c.src.reads; n != reads { // as runner.readLoop does
			reads, cl.now = n, time.Now().UnixNano()
		}
		_ = p.deliveries(cl, msg, cl.record)
	}
	if r.deliveredTotal() == 0 {
		b.Fatal("nothing delivered")
	}
}

func TestReadDeliveryDoesNotAllocate(t *testing.T) {
	data := payload(nil, 1, 100)
	frame := serverFrame(opText, true, []byte(`{"topic":"fanout","event":"tick","data":`+string(data)+`,"seq":1}`))
	c := newWSConn(nil, &loopReader{b: bytes.Repeat(frame, 8)})
	r := &runner{}
	r.hist.Store(new(histogram))
	cl := &client{shard: &r.delivered[0]}
	cl.record = func(ts int64) { r.hist.Load().record(cl.id, cl.now-ts); cl.shard.n.Add(1) }
	allocs := testing.AllocsPerRun(1000, func() {
		msg, err := c.next()
		if err != nil {
			t.Fatal(err)
		}
		_ = realtimeProto{}.deliveries(cl, msg, cl.record)
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per delivery", allocs)
	}
}
