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
// life: 8 KiB of the roughly 20 a connection cost before this file. Client
// frames are small, and outbound frames are collected by corkConn, so small
// buffers cost no extra syscalls where it matters:
//   - readBufSize holds the frames clients send (subscribe, pings, short
//     messages) in one read; a bigger frame is read straight into its
//     destination by bufio once the buffer is empty.
//   - writeBufSize holds a control frame (at most 125 bytes of payload and
//     a 14-byte header, rounded up to a size class) so pongs and close
//     frames, written outside a cork, go out in one write.
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

// corkConn is the net.Conn under a WebSocket. While corked (a write loop is
// draining the connection's queue) writes are collected in memory and go
// out in one write when the drain ends: one syscall for a whole batch of
// frames instead of one per frame, under one write deadline instead of one
// timer per frame. Writes while not corked (the library's pongs, pings and
// close frames) go straight through.
//
// coder/websocket serializes its own writes; mu orders them against
// uncork, which runs on the write loop outside the library.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	buf    *[]byte // from corkBufs while corked
	err    error   // a corked write failed: the connection is done
	dl     time.Duration
}

// Write implements io.Writer for the library's bufio.Writer.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if c.err != nil {
		return 0, c.err
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkFlushAt {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork starts collecting writes; a write of the collected bytes may take
// up to timeout before the connection counts as dead.
func (c *corkConn) cork(timeout time.Duration) {
	c.mu.Lock()
	c.corked = true
	c.dl = timeout
	if c.buf == nil {
		c.buf = corkBufs.Get().(*[]byte)
	}
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
	// A deadline for this write only: the library bounds its own direct
	// writes with contexts, and a deadline left set would fail them later.
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.dl))
	_, err := c.Conn.Write(*c.buf)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	*c.buf = (*c.buf)[:0]
	if err != nil {
		c.err = err
	}
	return err
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
