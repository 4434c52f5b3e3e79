package benchtool

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"testing"
	"time"
)

// deflated compresses p as a permessage-deflate sender does: a sync flush
// without its 4-byte tail.
func deflated(t *testing.T, p []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = w.Write(p)
	_ = w.Flush()
	z := b.Bytes()
	if !bytes.HasSuffix(z, []byte{0, 0, 0xff, 0xff}) {
		t.Fatal("no sync flush tail")
	}
	return z[:len(z)-4]
}

// The bench measures compressed fan-out only if both of its readers hand
// the protocol the inflated message, and leave uncompressed ones alone.
func TestCompressedMessagesAreInflated(t *testing.T) {
	msgs := [][]byte{
		[]byte(`{"topic":"t","event":"e","data":` + string(jsonPayload(nil, time.Now().UnixNano(), 2048)) + `,"seq":1}`),
		[]byte(`{"type":"subscribed","topic":"t","ref":1}`),
		[]byte(`{"topic":"t","event":"e","data":` + string(jsonPayload(nil, 7, 700)) + `,"seq":2}`),
	}
	var stream []byte
	for i, m := range msgs {
		if i == 1 {
			stream = append(stream, serverFrame(opText, true, m)...)
			continue
		}
		f := serverFrame(opText, true, deflated(t, m))
		f[0] |= 0x40 // RSV1
		stream = append(stream, f...)
	}

	c, _ := newTestConn(stream)
	c.deflate = true
	for i, want := range msgs {
		got, err := c.next()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("next, message %d: %v, %.60q", i, err, got)
		}
	}

	ws, _ := newTestConn(nil)
	ws.deflate = true
	s := &epState{buf: stream, w: len(stream)}
	for i, want := range msgs {
		got, ok, err := s.message(ws)
		if err != nil || !ok || !bytes.Equal(got, want) {
			t.Fatalf("epoll reader, message %d: %v %v, %.60q", i, ok, err, got)
		}
	}
}

func TestJSONPayloadHasTheRequestedSizeAndOneTimestamp(t *testing.T) {
	for _, size := range []int{64, 100, 2048, 8192} {
		p := jsonPayload(nil, time.Now().UnixNano(), size)
		if len(p) != size {
			t.Errorf("jsonPayload(%d) is %d bytes: %s", size, len(p), p)
		}
		if n := scanTimestamps(p, func(int64) {}); n != 1 {
			t.Errorf("jsonPayload(%d) holds %d timestamps", size, n)
		}
		if !json.Valid(p) {
			t.Errorf("jsonPayload(%d) is not JSON: %s", size, p)
		}
	}
}
