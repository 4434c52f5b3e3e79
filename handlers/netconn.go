package handlers

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"sync"
	"time"
)

// Buffer sizes of an accepted socket. net/http hands a hijacked connection
// 4 KiB read and write buffers that an idle WebSocket holds for its whole
// life: 8 KiB, about 40% of an idle connection's cost with them. Client
// frames are small, and outbound frames are collected by corkConn, so small
// buffers cost no extra syscalls where it matters:
//   - readBufSize holds the frames clients send (subscribe, pings, short
//     messages) in one read; a bigger frame is read straight into its
//     destination by bufio once the buffer is empty.
//   - writeBufSize holds any control frame (at most 125 bytes of payload
//     and a 2-byte header from a server), so each frame the library writes
//     reaches corkConn.Write whole, in one call: corkConn interleaves its
//     own data frames with the library's frames at frame boundaries only.
const (
	readBufSize  = 256
	writeBufSize = 160
)

// corkFlushAt is how many corked bytes are written out at once in the
// middle of a long drain (a replay burst of thousands of frames), so the
// cork buffer stays bounded.
const corkFlushAt = 64 << 10

// corkBufs recycles cork buffers between drains; a connection holds one
// only while its write loop runs.
var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// corkConn is the net.Conn under a WebSocket, and the gateway's own writer
// of data frames.
//
// While corked (a write loop is draining the connection's queue) the write
// loop appends whole text frames, framed here, to a buffer, and uncork
// writes the lot in one syscall. coder/websocket's per-message path (two
// channel locks, a select each, a bufio copy: a fifth of a fan-out's CPU)
// is left to control frames: the library's pongs, pings and close frames
// go through Write, straight to the socket, or into the buffer when they
// come during a drain.
//
// Deadlines: a write that blocks longer than the write timeout fails and
// the connection is dropped. Setting a deadline costs a timer update, so
// one stays set and is moved forward only when less than half of the
// timeout is left: a blocked write fails after between half and all of it.
//
// Once closing is set (the connection's close began) no data frame is
// added, so none can follow the close frame (RFC 6455 §5.5.1).
type corkConn struct {
	net.Conn

	mu       sync.Mutex
	corked   bool
	buf      *[]byte // from corkBufs while corked
	err      error   // a write failed: the connection is done
	timeout  time.Duration
	deadline time.Time // the write deadline set on Conn
	closing  bool
}

// Write implements io.Writer for the library's bufio.Writer.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.corked {
		c.armLocked()
		n, err := c.Conn.Write(p)
		if err != nil {
			c.err = err
		}
		return n, err
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkFlushAt {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork starts collecting writes, with timeout as the write timeout.
func (c *corkConn) cork(timeout time.Duration) {
	c.mu.Lock()
	c.corked = true
	c.timeout = timeout
	if c.buf == nil {
		c.buf = corkBufs.Get().(*[]byte)
	}
	c.mu.Unlock()
}

// writeText adds one text message, as a single unmasked frame, to the
// corked buffer; with deflated set, p is the message compressed for
// permessage-deflate and the frame carries RSV1 (RFC 7692 §6). It reports
// false, writing nothing, once the connection is closing or a write
// failed.
func (c *corkConn) writeText(p []byte, deflated bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing || c.err != nil || !c.corked {
		return false
	}
	b := *c.buf
	first := byte(0x81) // FIN, text
	if deflated {
		first |= 0x40 // RSV1
	}
	switch n := len(p); {
	case n < 126:
		b = append(b, first, byte(n))
	case n < 1<<16:
		b = append(b, first, 126, byte(n>>8), byte(n))
	default:
		b = append(b, first, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	*c.buf = append(b, p...)
	if len(*c.buf) >= corkFlushAt {
		return c.flushLocked() == nil
	}
	return true
}

// closeData stops data frames for good: the close frame may follow.
func (c *corkConn) closeData() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
}

// uncork writes what was collected and stops collecting. It reports a
// failed or timed-out write, after which the socket must be closed.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.corked = false
	if c.buf != nil {
		if cap(*c.buf) <= 4*corkFlushAt { // never pin a burst-sized buffer
			*c.buf = (*c.buf)[:0]
			corkBufs.Put(c.buf)
		}
		c.buf = nil
	}
	return err
}

func (c *corkConn) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if c.buf == nil || len(*c.buf) == 0 {
		return nil
	}
	c.armLocked()
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if err != nil {
		c.err = err
	}
	return err
}

// armLocked moves the write deadline forward when less than half of the
// timeout is left. Before the first cork there is no timeout, and the
// library bounds its own writes with contexts.
func (c *corkConn) armLocked() {
	if c.timeout <= 0 {
		return
	}
	now := time.Now()
	if c.deadline.Sub(now) < c.timeout/2 {
		c.deadline = now.Add(c.timeout)
		_ = c.Conn.SetWriteDeadline(c.deadline)
	}
}

// smallHijacker wraps the ResponseWriter given to websocket.Accept so that
// the hijacked connection comes back as a corkConn with small buffers.
type smallHijacker struct {
	http.ResponseWriter
	cork *corkConn // set by Hijack
}

// Hijack implements http.Hijacker.
func (h *smallHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Bytes the client sent right behind its handshake are in net/http's
	// reader already. The library takes such bytes from the buffer of the
	// reader it is given (and replaces that reader's source), so they must
	// be in the new reader's buffer too.
	size := readBufSize
	br := bufio.NewReaderSize(nc, size)
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		size = max(size, n)
		br = bufio.NewReaderSize(bytes.NewReader(bytes.Clone(early)), size)
		if _, err := br.Peek(n); err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
	// The 101 response may still sit in net/http's writer.
	if err := brw.Writer.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	h.cork = &corkConn{Conn: nc}
	return h.cork, bufio.NewReadWriter(br, bufio.NewWriterSize(h.cork, writeBufSize)), nil
}

// Unwrap lets http.ResponseController reach the wrapped writer.
func (h *smallHijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }
