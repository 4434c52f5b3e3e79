//go:build linux

package benchtool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// epollReader reads every connection of a run from a few goroutines, one
// epoll instance each, instead of one goroutine per connection. After its
// handshake a connection's socket is taken from the Go runtime (dup, then
// close the original, which leaves the runtime's poller) and read with
// plain read(2) calls when epoll reports it readable; a loop that found
// work sleeps pollPause before polling again, so deliveries that arrive
// meanwhile cost one epoll_wait together.
//
// The goroutine reader costs two reads per delivery (the second returns
// EAGAIN and parks), a netpoll wake-up and two goroutine switches; in the
// 10k-subscriber fan-out its profile showed 52% syscalls and 24% scheduler.
// Measured against the gateway at 20k and 40k deliveries/s (10k
// subscribers, same run, alternating): goroutine reader 0.14–0.15 and
// 0.26–0.30 cores, this one 0.08–0.09 and 0.17. Without the pause (a
// blocking epoll_wait per wake-up) it cost more than the goroutines:
// 0.20–0.21 and 0.33–0.40 cores.
type epollReader struct {
	r     *runner
	loops []*epollLoop
	byID  []atomic.Pointer[client]
	next  atomic.Uint32
}

type epollLoop struct {
	er   *epollReader
	epfd int
}

// epState is a connection's read state under the epoll reader.
type epState struct {
	buf        []byte
	r, w       int // unread bytes are buf[r:w]
	need       int // size of the frame that does not fit yet
	frag       []byte
	fragmented bool
}

func newEpollReader(r *runner, maxID int) (*epollReader, error) {
	er := &epollReader{r: r, byID: make([]atomic.Pointer[client], maxID)}
	for range max(runtime.GOMAXPROCS(0), 1) {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		l := &epollLoop{er: er, epfd: fd}
		er.loops = append(er.loops, l)
		go l.run()
	}
	return er, nil
}

// add takes c's socket from the Go runtime and reads it from a loop.
func (er *epollReader) add(c *client) error {
	tc, ok := c.ws.nc.(*net.TCPConn)
	if !ok {
		return errors.New("not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) { fd, derr = syscall.Dup(int(f)) }); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("dup: %w", derr)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return err
	}
	// Bytes the handshake read ahead, still in the bufio.Reader.
	c.ws.release()
	pending, _ := c.ws.br.Peek(c.ws.br.Buffered())
	s := &c.ep
	*s = epState{buf: make([]byte, max(readBufSize, len(pending)))}
	s.w = copy(s.buf, pending)
	_ = tc.Close() // the dup keeps the socket open
	c.ws.wmu.Lock()
	c.ws.fd = fd
	c.ws.wmu.Unlock()
	c.ws.br = nil
	if s.w > 0 {
		c.now = time.Now().UnixNano()
		if err := er.drain(c); err != nil {
			return err
		}
	}
	er.byID[c.id].Store(c)
	l := er.loops[er.next.Add(1)%uint32(len(er.loops))]
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(c.id)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		er.byID[c.id].Store(nil)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	c.loop = l
	return nil
}

// pollPause is how long a loop sleeps after a partial batch before
// polling again without blocking: deliveries arriving meanwhile are read
// in one pass instead of one epoll_wait wake-up each.
const pollPause = 500 * time.Microsecond

func (l *epollLoop) run() {
	events := make([]syscall.EpollEvent, 256)
	timeout := -1
	for {
		n, err := syscall.EpollWait(l.epfd, events, timeout)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			panic(fmt.Sprintf("epoll_wait: %v", err))
		}
		for i := range events[:n] {
			if c := l.er.byID[events[i].Fd].Load(); c != nil {
				l.readOnce(c)
			}
		}
		switch {
		case n == len(events):
			timeout = 0 // more may be ready now
		case n > 0:
			time.Sleep(pollPause)
			timeout = 0
		default:
			timeout = -1 // quiet: block until something arrives
		}
	}
}

// readOnce does one read(2): level-triggered epoll reports the socket
// again if more is waiting.
func (l *epollLoop) readOnce(c *client) {
	s := &c.ep
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
	n, err := syscall.Read(c.ws.fd, s.buf[s.w:])
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
		return
	}
	if n <= 0 {
		if err == nil {
			err = io.EOF
		}
		l.end(c, err)
		return
	}
	s.w += n
	c.now = time.Now().UnixNano()
	if err := l.er.drain(c); err != nil {
		l.end(c, err)
	}
}

// drain handles every complete message in c's buffer.
func (er *epollReader) drain(c *client) error {
	for {
		msg, ok, err := c.ep.message(c.ws)
		if err != nil || !ok {
			return err
		}
		if err := er.r.proto.deliveries(c, msg, c.record); err != nil {
			return err
		}
	}
}

// message returns the next complete data message in the buffer, answering
// pings and echoing a close (then errClosed); ok is false when more bytes
// are needed.
func (s *epState) message(ws *wsConn) (msg []byte, ok bool, err error) {
	for {
		b := s.buf[s.r:s.w]
		if len(b) < 2 {
			return nil, false, nil
		}
		b0, b1 := b[0], b[1]
		if b1&0x80 != 0 {
			return nil, false, errMaskedFrame
		}
		h, n := 2, int(b1&0x7f)
		switch n {
		case 126:
			if h = 4; len(b) < h {
				return nil, false, nil
			}
			n = int(binary.BigEndian.Uint16(b[2:4]))
		case 127:
			if h = 10; len(b) < h {
				return nil, false, nil
			}
			v := binary.BigEndian.Uint64(b[2:10])
			if v > maxFrame {
				return nil, false, errFrameSize
			}
			n = int(v)
		}
		if len(b) < h+n {
			s.need = h + n
			return nil, false, nil
		}
		s.need = 0
		p := b[h : h+n]
		s.r += h + n
		fin, op := b0&0x80 != 0, b0&0x0f
		switch op {
		case opPing:
			if err := ws.write(opPong, p); err != nil {
				return nil, false, err
			}
		case opPong:
		case opClose:
			_ = ws.write(opClose, p[:min(len(p), 2)])
			return nil, false, errClosed
		case opText, opBinary:
			rsv1 := ws.deflate && b0&0x40 != 0
			if fin {
				if rsv1 {
					m, err := ws.inflate(p)
					return m, err == nil, err
				}
				return p, true, nil
			}
			s.frag = append(s.frag[:0], p...)
			s.fragmented, ws.fragRSV1 = true, rsv1
		case opContinuation:
			if !s.fragmented {
				return nil, false, errors.New("websocket: unexpected continuation frame")
			}
			s.frag = append(s.frag, p...)
			if len(s.frag) > maxFrame {
				return nil, false, errFrameSize
			}
			if fin {
				s.fragmented = false
				if ws.fragRSV1 {
					m, err := ws.inflate(s.frag)
					return m, err == nil, err
				}
				return s.frag, true, nil
			}
		default:
			return nil, false, fmt.Errorf("websocket: unknown opcode %d", op)
		}
	}
}

// end removes c from its loop, closes its socket and finishes its reading.
func (l *epollLoop) end(c *client, err error) {
	c.ws.wmu.Lock()
	fd := c.ws.fd
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	l.er.byID[c.id].Store(nil)
	syscall.Close(fd)
	c.ws.fd = fdClosed
	c.ws.wmu.Unlock()
	c.ep = epState{}
	l.er.r.finishReading(c, err)
}

// writeFD writes all of b to a non-blocking socket, waiting briefly when
// its buffer is full (the bench writes only short frames: pongs, closes).
func writeFD(fd int, b []byte) error {
	deadline := time.Now().Add(time.Second)
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if n > 0 {
			b = b[n:]
			continue
		}
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			if time.Now().After(deadline) {
				return fmt.Errorf("write: %w", syscall.ETIMEDOUT)
			}
			time.Sleep(time.Millisecond)
			continue
		}
		return err
	}
	return nil
}

// shutdownFD ends both directions of a socket the epoll reader owns: the
// reader sees the end of the stream and closes it.
func shutdownFD(ws *wsConn) {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	if ws.fd >= 0 {
		_ = syscall.Shutdown(ws.fd, syscall.SHUT_RDWR)
	}
}

func closeFD(fd int) error { return syscall.Close(fd) }

const epollAvailable = true
