package benchtool

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/flate"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// readBufSize is the bufio.Reader size of a connection. A frame that fits
// is parsed in place (Peek, no copy); the 100-byte fan-out envelopes and
// several of them queued together do. Larger frames are copied into a
// per-connection buffer.
const readBufSize = 4096

// maxFrame bounds a frame the client accepts: the gateway never sends more
// than 1 MiB (docs/protocol.md §3.1); Centrifugo's batches stay well under it.
const maxFrame = 4 << 20

var (
	errMaskedFrame = errors.New("websocket: server frame is masked")
	errFrameSize   = errors.New("websocket: frame too large")
	errClosed      = errors.New("websocket: closed by server")
)

// wsConn is a minimal RFC 6455 client connection: one reader (the caller
// of next), writers serialised by a mutex, and permessage-deflate without
// context takeover when asked for (inflating only: it sends uncompressed).
// It reads through a bufio.Reader and hands out payloads that alias the
// reader's buffer, so a delivery costs a header parse and no allocation.
type wsConn struct {
	nc   net.Conn
	br   *bufio.Reader
	src  countingReader // what br reads from: nc, counting the reads
	buf  []byte         // payloads that do not fit the bufio buffer
	frag []byte         // a fragmented message being reassembled

	wmu  sync.Mutex
	wbuf []byte
	// fd is the socket once the epoll reader took it from the Go runtime
	// (reader_linux.go): -1 before, fdClosed after the reader closed it.
	// Writes then go to it directly, under wmu.
	fd int

	// pending is the number of bytes to Discard from br before the next
	// header: the payload handed out by the previous next call.
	pending int

	// deflate: the server accepted permessage-deflate. rsv1 is the RSV1
	// bit of the last frame read (a compressed message); fragRSV1 that of
	// the first frame of the message being reassembled.
	deflate, rsv1, fragRSV1 bool
	zin                     bytes.Reader
	zr                      io.ReadCloser // flate reader, reset per message (klauspost: a 2 KiB event inflates in 6 µs, 20 µs with compress/flate)
	zbuf, zout              []byte
}

// inflate returns the compressed message p inflated (RFC 7692 §7.2.2: the
// sender removed the 4-byte tail of a sync flush). The result is valid
// until the next call.
func (c *wsConn) inflate(p []byte) ([]byte, error) {
	c.zbuf = append(append(c.zbuf[:0], p...), 0, 0, 0xff, 0xff)
	c.zin.Reset(c.zbuf)
	if c.zr == nil {
		c.zr = flate.NewReader(&c.zin)
	} else if err := c.zr.(flate.Resetter).Reset(&c.zin, nil); err != nil {
		return nil, err
	}
	out := c.zout[:0]
	for {
		if len(out) == cap(out) {
			out = append(out, 0)[:len(out)]
		}
		n, err := c.zr.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if len(out) > maxFrame {
			return nil, errFrameSize
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("websocket: inflating a message: %w", err)
		}
	}
	c.zout = out
	return out, nil
}

// dialWS opens a TCP connection from src (nil: any) to the URL's host and
// performs the upgrade. origin is sent as Origin (the gateway's same-origin
// policy requires one when no auth hook is configured).
func dialWS(u *wsURL, src net.IP, timeout time.Duration, compress bool) (*wsConn, error) {
	d := net.Dialer{Timeout: timeout}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	nc, err := d.Dial("tcp", u.hostport)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", u.hostport, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := newWSConn(nc, nc)
	if err := c.handshake(u, timeout, compress); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

const fdClosed = -2

func newWSConn(nc net.Conn, r io.Reader) *wsConn {
	c := &wsConn{nc: nc, fd: -1}
	c.src.r = r
	c.br = bufio.NewReaderSize(&c.src, readBufSize)
	return c
}

// countingReader counts the reads from the socket: the read loop takes
// the time only when new bytes came in, because every frame found in a
// buffer filled by one read arrived at that read. BenchmarkReadDelivery
// spent 40% of its time in time.Now when it took it per frame.
type countingReader struct {
	r     io.Reader
	reads uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// wsURL is a parsed ws:// URL.
type wsURL struct {
	raw      string
	hostport string // host:port to dial
	host     string // Host header
	path     string // request URI
}

func parseWSURL(s string) (*wsURL, error) {
	rest, ok := strings.CutPrefix(s, "ws://")
	if !ok {
		return nil, fmt.Errorf("target %q: only ws:// URLs are supported", s)
	}
	host, path, _ := strings.Cut(rest, "/")
	path = "/" + path
	if host == "" {
		return nil, fmt.Errorf("target %q: no host", s)
	}
	hp := host
	if _, _, err := net.SplitHostPort(host); err != nil {
		hp = net.JoinHostPort(host, "80")
	}
	return &wsURL{raw: s, hostport: hp, host: host, path: path}, nil
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func (c *wsConn) handshake(u *wsURL, timeout time.Duration, compress bool) error {
	var key [16]byte
	_, _ = rand.Read(key[:])
	k := base64.StdEncoding.EncodeToString(key[:])
	ext := ""
	if compress {
		ext = "\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover"
	}
	req := "GET " + u.path + " HTTP/1.1\r\nHost: " + u.host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + k +
		"\r\nSec-WebSocket-Version: 13\r\nOrigin: http://" + u.host + ext + "\r\n\r\n"
	_ = c.nc.SetDeadline(time.Now().Add(timeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(c.nc, req); err != nil {
		return fmt.Errorf("writing upgrade request: %w", err)
	}
	status, err := c.br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading upgrade response: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101")) {
		code := strings.TrimSpace(string(status))
		// Read the headers and a short body for the error message.
		body := c.readErrorBody()
		return &upgradeError{status: code, body: body}
	}
	h := sha1.Sum([]byte(k + wsGUID))
	want := base64.StdEncoding.EncodeToString(h[:])
	accepted := false
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reading upgrade headers: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, val, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(name), "Sec-WebSocket-Accept") && string(bytes.TrimSpace(val)) == want {
			accepted = true
		}
		if ok && compress && strings.EqualFold(string(name), "Sec-WebSocket-Extensions") &&
			bytes.HasPrefix(bytes.TrimSpace(val), []byte("permessage-deflate")) {
			c.deflate = true
		}
	}
	if !accepted {
		return errors.New("upgrade response without a valid Sec-WebSocket-Accept")
	}
	return nil
}

func (c *wsConn) readErrorBody() string {
	n := 0
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return ""
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if name, val, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(name), "Content-Length") {
			fmt.Sscan(string(bytes.TrimSpace(val)), &n)
		}
	}
	if n <= 0 || n > 512 {
		return ""
	}
	b := make([]byte, n)
	_, _ = io.ReadFull(c.br, b)
	return strings.TrimSpace(string(b))
}

// upgradeError is a refused upgrade (429, 503 …).
type upgradeError struct {
	status string
	body   string
}

func (e *upgradeError) Error() string {
	if e.body != "" {
		return "upgrade refused: " + e.status + ": " + e.body
	}
	return "upgrade refused: " + e.status
}

// next returns the next data message (text or binary). Pings are answered,
// pongs skipped, and a close frame is echoed and reported as errClosed.
// The payload is valid until the next call.
func (c *wsConn) next() ([]byte, error) {
	if c.pending > 0 {
		_, _ = c.br.Discard(c.pending)
		c.pending = 0
	}
	var msg []byte
	fragmented := false
	for {
		fin, op, p, err := c.frame()
		if err != nil {
			return nil, err
		}
		switch op {
		case opPing:
			err := c.write(opPong, p)
			c.release()
			if err != nil {
				return nil, err
			}
			continue
		case opPong:
			c.release()
			continue
		case opClose:
			var code [2]byte
			copy(code[:], p)
			c.release()
			_ = c.write(opClose, code[:min(len(p), 2)])
			return nil, errClosed
		case opText, opBinary:
			if fin {
				if c.rsv1 {
					m, err := c.inflate(p)
					c.release()
					return m, err
				}
				return p, nil
			}
			msg = append(c.frag[:0], p...)
			fragmented, c.fragRSV1 = true, c.rsv1
			c.release()
		case opContinuation:
			if !fragmented {
				return nil, errors.New("websocket: unexpected continuation frame")
			}
			msg = append(msg, p...)
			c.release()
			if len(msg) > maxFrame {
				return nil, errFrameSize
			}
			if fin {
				c.frag = msg[:0]
				if c.fragRSV1 {
					return c.inflate(msg)
				}
				return msg, nil
			}
		default:
			return nil, fmt.Errorf("websocket: unknown opcode %d", op)
		}
	}
}

// release discards the payload handed out by frame, if it aliases br.
func (c *wsConn) release() {
	if c.pending > 0 {
		_, _ = c.br.Discard(c.pending)
		c.pending = 0
	}
}

// frame reads one frame header and returns its payload: aliasing the
// bufio buffer when it fits (c.pending is then set), else copied into c.buf.
func (c *wsConn) frame() (fin bool, op byte, payload []byte, err error) {
	h, err := c.br.Peek(2)
	if err != nil {
		return false, 0, nil, err
	}
	b0, b1 := h[0], h[1]
	if b1&0x80 != 0 {
		return false, 0, nil, errMaskedFrame
	}
	hlen := 2
	n := int(b1 & 0x7f)
	switch n {
	case 126:
		hlen = 4
	case 127:
		hlen = 10
	}
	if hlen > 2 {
		h, err = c.br.Peek(hlen)
		if err != nil {
			return false, 0, nil, err
		}
		if hlen == 4 {
			n = int(binary.BigEndian.Uint16(h[2:4]))
		} else {
			v := binary.BigEndian.Uint64(h[2:10])
			if v > maxFrame {
				return false, 0, nil, errFrameSize
			}
			n = int(v)
		}
	}
	if n > maxFrame {
		return false, 0, nil, errFrameSize
	}
	_, _ = c.br.Discard(hlen)
	fin, op = b0&0x80 != 0, b0&0x0f
	c.rsv1 = c.deflate && b0&0x40 != 0
	if n <= c.br.Size() {
		p, err := c.br.Peek(n)
		if err != nil {
			return false, 0, nil, err
		}
		c.pending = n
		return fin, op, p, nil
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	p := c.buf[:n]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return false, 0, nil, err
	}
	return fin, op, p, nil
}

// writeText sends one masked text frame.
func (c *wsConn) writeText(p []byte) error { return c.write(opText, p) }

// writeTexts sends several masked text frames in one write.
func (c *wsConn) writeTexts(ps ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf[:0]
	for _, p := range ps {
		b = appendFrame(b, opText, p)
	}
	c.wbuf = b
	return c.send(b)
}

func (c *wsConn) write(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendFrame(c.wbuf[:0], op, p)
	return c.send(c.wbuf)
}

// send writes b to the socket; wmu is held.
func (c *wsConn) send(b []byte) error {
	switch {
	case c.fd >= 0:
		return writeFD(c.fd, b)
	case c.fd == fdClosed:
		return net.ErrClosed
	}
	_, err := c.nc.Write(b)
	return err
}

// appendFrame appends a final, masked client frame (RFC 6455 §5.3). The
// mask only has to be unpredictable to a browser's page; a load generator
// uses a cheap one.
func appendFrame(b []byte, op byte, p []byte) []byte {
	b = append(b, 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	mask := [4]byte{0x5a, 0x17, 0xc3, 0x8e}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, p...)
	for i := range p {
		b[start+i] ^= mask[i&3]
	}
	return b
}

// close sends a close frame (1000) and closes the socket without waiting
// for the server's echo.
func (c *wsConn) close() {
	c.wmu.Lock()
	fd := c.fd
	c.wmu.Unlock()
	if fd < 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	}
	_ = c.write(opClose, []byte{0x03, 0xe8})
	if fd >= 0 {
		// The epoll reader sees the end of the stream and closes the fd.
		shutdownFD(c)
		return
	}
	_ = c.nc.Close()
}
