package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// conn is one accepted WebSocket, or one SSE stream (sse.go): both are
// the same hub subscriber with the same queue, policy and accounting; only
// how a drained frame reaches the client differs.
//
// Goroutines: the read loop (started by the gateway after the upgrade, on a
// fresh goroutine so its stack does not carry Caddy's middleware chain) owns
// the connection's subscriptions and control-frame state; it ends on a read
// error and then cleans everything up. A write loop runs only while frames
// are queued, and a message-hook worker only while application messages
// wait, so an idle connection costs one goroutine (docs/design.md).
type conn struct {
	g        *Gateway
	ws       *websocket.Conn
	cork     *corkConn  // the socket under ws, which data frames are written to; nil in socketless test conns
	deflate  *deflater  // set when the connection negotiated permessage-deflate
	sse      *sseStream // set for an SSE stream, which has neither ws nor cork
	id       string     // the welcome session id, also the connection id of the API and hooks
	ip       string
	identity json.RawMessage // the auth hook's object, or {}
	user     string          // String(identity[user_key]); "" when absent
	grant    *tokenGrant     // what the upgrade's token allows; nil without one

	current    atomic.Bool   // sent a well-formed hello (§1.3)
	vocabulary atomic.Uint32 // vocabCurrent or vocabLegacy once fixed (§1.4)
	batchCap   atomic.Bool   // hello caps include "batch" (§7.1)

	lastRead  atomic.Int64 // unix nanos of the last frame or pong received
	lastWrite atomic.Int64 // unix nanos of the last frame written (or accept)
	lastPing  int64        // sweeper only

	// mu guards the outbound queue. It is a leaf lock: nothing else is
	// acquired while it is held, so fan-out may take it under a topic lock.
	mu     sync.Mutex
	queue  []outFrame
	spare  []outFrame
	queued int64 // bytes queued and not yet written, replay frames excluded
	// replayQueued counts the exempt bytes of the replay burst being written.
	replayQueued int64
	writing      bool // a write loop is running
	closed       bool // no more frames are accepted

	closeOnce sync.Once
	cleaned   atomic.Bool // cleanup ran: the read loop has ended

	nsubs atomic.Int32 // len(topics), readable from other goroutines

	// filters holds the topics whose live frames are held or floored
	// (hold.go); filtered is set while it is non-empty. Guarded by mu.
	filters  map[string]*topicFilter
	filtered atomic.Bool

	// Read-loop state.
	topics  map[string]struct{}
	resumes map[string]pendingResume // §5.3 pending resumes, at most MaxLastSeen

	presence        map[string]string // presence topic → this connection's member key
	observing       map[string]bool   // presence topics observed through __presence:<t>
	cursorsAttached map[string]bool   // cursor topics whose frames this connection receives
	cursorsMoved    []string          // cursor topics this connection has an entry on
	tokens          float64
	refilled        time.Time
	dropStart       time.Time
	drops           int

	reqMu   sync.Mutex
	nextRef uint64
	pending map[uint64]chan reply

	hookMu      sync.Mutex
	hookQ       []appMessage
	hookRunning bool
}

type outFrame struct {
	b      []byte
	at     int64 // unix nanos of the publish, for the latency metric; 0 for control frames
	exempt bool  // a replay frame: not counted against max_backpressure
}

type reply struct {
	data   json.RawMessage
	err    string // the client's error, when it replied with one
	closed bool   // the connection closed before a reply came
}

type appMessage struct {
	data   []byte
	binary bool
}

// enqueue queues a frame without blocking. at is when the publish entered
// the gateway (zero for frames that are not publishes). It reports whether
// the frame was queued; a full queue applies the slow-consumer policy.
func (c *conn) enqueue(b []byte, at time.Time) bool { return c.enqueueFrame(b, at, false) }

// sendReplay queues the frames of one replay or resume gap fill. One such
// burst at a time is exempt from max_backpressure: the client asked for it
// and a buffer bounds it, and a reconnecting client must be able to catch
// up on more than the limit. While a burst is still unwritten, the next one
// counts like any frame, so a client that asks and never reads is closed
// (or dropped from) by the slow-consumer policy instead of growing memory.
func (c *conn) sendReplay(frames [][]byte) {
	c.mu.Lock()
	exempt := c.replayQueued == 0
	c.mu.Unlock()
	for _, b := range frames {
		c.enqueueFrame(b, time.Time{}, exempt)
	}
}

func (c *conn) enqueueFrame(b []byte, at time.Time, exempt bool) bool {
	return c.enqueueFrames([][]byte{b}, at, exempt) == 1
}

// enqueueAll queues the frames of one publish (a batch publish split into
// several frames) as a unit: the backpressure check treats them like one
// frame, so a publish bigger than max_backpressure reaches a client whose
// queue is empty instead of closing it halfway. It returns how many were
// queued: all or none.
func (c *conn) enqueueAll(bs [][]byte, at time.Time) int { return c.enqueueFrames(bs, at, false) }

func (c *conn) enqueueFrames(bs [][]byte, at time.Time, exempt bool) int {
	size := int64(0)
	for _, b := range bs {
		size += int64(len(b))
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0
	}
	s := c.g.settings()
	if !exempt && c.queued > 0 && c.queued+size > s.MaxBackpressure {
		if s.DropSlow {
			c.mu.Unlock()
			c.g.m.dropSlow.Add(float64(len(bs)))
			return 0
		}
		c.closed = true
		c.queue, c.queued = nil, 0
		c.mu.Unlock()
		c.g.m.dropSlow.Inc()
		c.closeAsync(websocket.StatusTryAgainLater, "Slow consumer")
		return 0
	}
	var ts int64
	if !at.IsZero() {
		ts = at.UnixNano()
	}
	for _, b := range bs {
		c.queue = append(c.queue, outFrame{b: b, at: ts, exempt: exempt})
	}
	if exempt {
		c.replayQueued += size
	} else {
		c.queued += size
	}
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		c.g.wg.Add(1)
		go c.writeLoop()
	}
	return len(bs)
}

// send queues a control frame or direct envelope.
func (c *conn) send(b []byte) bool { return c.enqueue(b, time.Time{}) }

// writeLoop drains the queue and exits when it is empty.
//
// It yields once before its first drain. The loop starts on the first
// frame of a quiet connection, usually while a publish is still being
// enqueued to thousands of subscribers; letting the publisher (and the
// publishes behind it) run first means each drain finds more frames and
// writes them in one syscall, where otherwise every connection would
// write each frame on its own. On an idle scheduler the yield returns at
// once. Measured with bursts of 40 publishes in flight (`fanout -rate max
// -window 40`), alternating builds: at 10 000 subscribers 279k and 493k
// deliveries/s against 183k and 187k without it (298k and 409k against
// 162k and 183k per server CPU-second), at 2 000 subscribers 370k and
// 325k against 298k and 222k per server CPU-second.
func (c *conn) writeLoop() {
	defer c.g.wg.Done()
	defer c.recoverPanic("write loop")
	runtime.Gosched()
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.closed {
			c.writing = false
			if c.closed {
				c.queue, c.spare = nil, nil
			}
			c.mu.Unlock()
			return
		}
		batch := c.queue
		c.queue, c.spare = c.spare[:0], nil
		c.mu.Unlock()

		if !c.writeBatch(batch) {
			return
		}
		clear(batch)
		c.mu.Lock()
		if c.spare == nil && cap(batch) <= 256 {
			c.spare = batch[:0] // reuse, but never pin a burst-sized slice
		}
		c.mu.Unlock()
	}
}

// writeBatch writes drained frames, corked into as few socket writes as
// their size allows, and accounts for them. It reports false when the
// connection is done (closed meanwhile, or a write failed).
//
// Data frames are framed by corkConn itself, not written through
// coder/websocket: the library arms a context.AfterFunc per write when its
// context has a deadline and takes two channel locks per message, together
// a third of a fan-out's CPU; the corked socket write carries the write
// timeout instead.
func (c *conn) writeBatch(batch []outFrame) bool {
	if c.sse != nil {
		n, failed := c.sse.write(c, batch)
		return c.wrote(batch, n, failed, n < len(batch))
	}
	c.cork.cork(c.g.settings().WriteTimeout)
	n := 0
	failed, stopped := false, false
	coalesce := c.batchCap.Load() && len(batch) > 1
	// With compression, only frames that stay uncompressed are coalesced:
	// a batch frame is built per connection, and compressing it would cost
	// every subscriber a compression, where a shared frame costs one.
	maxElem, d := math.MaxInt, c.deflate
	if d != nil {
		maxElem = d.minSize - 1
	}
	var zRaw, zWire int64 // bytes compressed, before and after
	for i := 0; i < len(batch); {
		b, k, buf := batch[i].b, 1, (*[]byte)(nil)
		if coalesce {
			b, k, buf = coalesceEnvelopes(batch[i:], maxElem)
		}
		var z []byte
		if d != nil && buf == nil {
			z = d.shared(b)
		}
		var ok bool
		if z != nil {
			ok = c.cork.writeText(z, true)
			zRaw, zWire = zRaw+int64(len(b)), zWire+int64(len(z))
		} else {
			ok = c.cork.writeText(b, false)
		}
		putBatchBuf(buf, b)
		if !ok {
			// Closing (slow consumer, shutdown: the close frame goes
			// next), or a write failed, which uncork reports.
			stopped = true
			break
		}
		n += k
		i += k
	}
	// Uncork on every path: a close frame the library wrote meanwhile may
	// sit in the cork buffer.
	if c.cork.uncork() != nil {
		failed = true
	}
	if zRaw > 0 {
		c.g.m.compressedRaw.Add(float64(zRaw))
		c.g.m.compressedWire.Add(float64(zWire))
	}
	return c.wrote(batch, n, failed, stopped)
}

// wrote accounts for the first n frames of batch, written; failed means a
// write failed or timed out, stopped that the connection began closing.
// It reports whether the write loop goes on.
func (c *conn) wrote(batch []outFrame, n int, failed, stopped bool) bool {
	if failed {
		// A failed or timed-out write: that is the policy for a client
		// that stopped reading (coder/websocket#242 closes the socket on
		// a timed-out write too).
		c.markClosed()
		c.closeNow()
	}
	var written, replayWritten int64
	for _, f := range batch[:n] {
		if f.exempt {
			replayWritten += int64(len(f.b))
		} else {
			written += int64(len(f.b))
		}
	}
	now := c.g.now()
	c.lastWrite.Store(now.UnixNano())
	c.g.m.framesOut.Add(float64(n))
	c.g.m.bytesOut.Add(float64(written + replayWritten))
	for _, f := range batch[:n] {
		if f.at != 0 {
			c.g.m.latency.Observe(float64(now.UnixNano()-f.at) / 1e9)
		}
	}
	if failed || stopped {
		return false // markClosed reset the counters
	}
	c.mu.Lock()
	c.queued -= written
	c.replayQueued -= replayWritten
	c.mu.Unlock()
	return true
}

// batchBufs recycles the buffers coalesceEnvelopes builds frames in.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// isEnvelope tells an event envelope from a control frame (§3.4): only
// envelopes may go into a batch frame (§7.2).
func isEnvelope(b []byte) bool { return bytes.HasPrefix(b, envelopePrefix) }

var envelopePrefix = []byte(`{"topic":`)

// coalesceEnvelopes returns the frame to write for the head of frames: when
// it starts a run of two or more envelopes, one batch frame holding as many
// of them as fit in wire.MaxBatchFrame, built in buf (from batchBufs), else
// the first frame as it is (buf nil). k is how many frames it covers. A
// client with the batch cap handles the elements as separate frames, in
// order (§7.2), and the gateway frames and copies once for the lot: when
// queues build up under load, that is most of a delivery's cost.
func coalesceEnvelopes(frames []outFrame, maxElem int) (b []byte, k int, buf *[]byte) {
	fits := func(f []byte) bool { return len(f) <= maxElem && isEnvelope(f) }
	if len(frames) < 2 || !fits(frames[0].b) || !fits(frames[1].b) {
		return frames[0].b, 1, nil
	}
	size := len(wire.BatchOpen) + len(wire.BatchClose) + len(frames[0].b)
	k = 1
	for k < len(frames) && fits(frames[k].b) && size+1+len(frames[k].b) <= wire.MaxBatchFrame {
		size += 1 + len(frames[k].b)
		k++
	}
	if k == 1 {
		return frames[0].b, 1, nil
	}
	buf = batchBufs.Get().(*[]byte)
	b = append((*buf)[:0], wire.BatchOpen...)
	for j, f := range frames[:k] {
		if j > 0 {
			b = append(b, ',')
		}
		b = append(b, f.b...)
	}
	b = append(b, wire.BatchClose...)
	return b, k, buf
}

// putBatchBuf returns a coalescing buffer, grown to b, to the pool.
func putBatchBuf(buf *[]byte, b []byte) {
	if buf != nil && cap(b) <= wire.MaxBatchFrame+4096 {
		*buf = b[:0]
		batchBufs.Put(buf)
	}
}

func (c *conn) markClosed() {
	c.mu.Lock()
	c.closed = true
	c.queue, c.queued, c.replayQueued = nil, 0, 0
	c.mu.Unlock()
	if c.cork != nil { // nil in tests' socketless connections
		c.cork.closeData()
	}
}

// closeWith closes the connection with a code and reason, once. It blocks
// for the close handshake (bounded by the library to about 10 s), so call it
// on its own goroutine when that matters.
func (c *conn) closeWith(code websocket.StatusCode, reason string) {
	c.closeOnce.Do(func() {
		c.markClosed()
		c.g.m.closed(strconv.Itoa(int(code)))
		if c.sse != nil {
			c.sse.finish(int(code), reason)
			return
		}
		_ = c.ws.Close(code, reason)
	})
}

// closeNow drops the connection without a close handshake: the socket
// closes, or the SSE stream ends; the read loop (or the SSE request)
// then cleans up.
func (c *conn) closeNow() {
	if c.sse != nil {
		c.sse.end()
		return
	}
	c.ws.CloseNow()
}

// closeAsync runs closeWith on a goroutine the gateway waits for. A
// connection already cleaned up is left alone: its socket is gone.
func (c *conn) closeAsync(code websocket.StatusCode, reason string) {
	if c.cleaned.Load() {
		return
	}
	c.g.wg.Add(1)
	go func() {
		defer c.g.wg.Done()
		defer c.recoverPanic("close")
		c.closeWith(code, reason)
	}()
}

func (c *conn) recoverPanic(where string) {
	if r := recover(); r != nil {
		c.g.logger.Error("panic in connection goroutine; closing the connection",
			zap.String("where", where), zap.String("connection", c.id),
			zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		c.closeNow()
	}
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads frames until the connection fails, then cleans up.
func (c *conn) readLoop() {
	defer c.g.wg.Done()
	defer c.cleanup()
	defer c.recoverPanic("read loop")
	for {
		// A context that is never done: with the gateway's, the library
		// would register a context.AfterFunc on it for every read, a few
		// hundred bytes per idle connection. Close ends reads by closing
		// the sockets.
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			c.logClose(err)
			return
		}
		buf := readBufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err = buf.ReadFrom(r)
		if err != nil {
			putReadBuf(buf)
			c.logClose(err)
			return
		}
		now := c.g.now()
		c.lastRead.Store(now.UnixNano())
		c.handleOnFreshStack(typ, buf.Bytes(), now)
		putReadBuf(buf)
	}
}

// handleOnFreshStack runs handle on a short-lived goroutine and waits for
// it. Handling a frame (a subscribe with presence, say) runs deep and would
// grow the read loop's stack to 8 KiB or more; the runtime shrinks a stack
// only during a GC and only to twice what is in use, so an idle connection
// would keep that stack for good: 40% of its memory. On its own goroutine
// the deep stack goes away with the frame, and the read loop keeps the few
// KiB a blocked read needs. The read loop waits, so frames are still
// handled one at a time and in order, and the read-loop state stays
// owned by one goroutine at a time. It costs a goroutine start per inbound
// frame (about a microsecond), next to no memory.
func (c *conn) handleOnFreshStack(typ websocket.MessageType, msg []byte, now time.Time) {
	var done sync.WaitGroup
	done.Add(1)
	go func() {
		defer done.Done()
		defer c.recoverPanic("frame handler") // closes the socket: the read loop ends
		c.handle(typ, msg, now)
	}()
	done.Wait()
}

func putReadBuf(b *bytes.Buffer) {
	if b.Cap() <= 64<<10 { // drop big buffers (golang/go#23199)
		readBufs.Put(b)
	}
}

func (c *conn) logClose(err error) {
	if errors.Is(err, websocket.ErrMessageTooBig) {
		c.g.m.dropOversized.Inc()
		c.g.m.closed("1009")
	}
	if ce := c.g.logger.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.String("connection", c.id), zap.String("remote_ip", c.ip), zap.Error(err))
	}
}

// allowFrame applies the per-connection inbound rate (token bucket) and the
// escalation to close 4429 (§8).
func (c *conn) allowFrame(now time.Time) bool {
	s := c.g.settings()
	if s.InboundRate < 0 {
		return true
	}
	if c.refilled.IsZero() {
		c.tokens, c.refilled = float64(s.InboundBurst), now
	} else {
		c.tokens += now.Sub(c.refilled).Seconds() * float64(s.InboundRate)
		if c.tokens > float64(s.InboundBurst) {
			c.tokens = float64(s.InboundBurst)
		}
		c.refilled = now
	}
	if c.tokens >= 1 {
		c.tokens--
		return true
	}
	c.g.m.dropRate.Inc()
	if now.Sub(c.dropStart) > 10*time.Second {
		c.dropStart, c.drops = now, 0
	}
	c.drops++
	if s.RateLimitClose >= 0 && c.drops > s.RateLimitClose {
		c.closeAsync(4429, "Rate limited")
	}
	return false
}

// cleanup runs once when the read loop ends: it detaches the connection
// from every topic and index, fails pending requests, and releases the socket.
func (c *conn) cleanup() {
	c.cleaned.Store(true)
	c.grant.stop()
	c.markClosed()
	for t := range c.topics {
		c.g.hub.unsubscribe(t, c)
		c.g.routeRelease(t)
		c.g.presenceLeave(c, t)
	}
	for t := range c.observing {
		c.g.presenceObserve(c, t, false)
	}
	for _, t := range c.cursorsMoved {
		c.g.cursorRemove(c, t)
	}
	for t := range c.cursorsAttached {
		c.g.cursorDetach(c, t)
	}
	c.g.groupsLeaveAll(c)
	c.g.m.subscriptions.Sub(float64(len(c.topics)))
	c.topics = nil
	c.nsubs.Store(0)
	c.reqMu.Lock()
	for ref, ch := range c.pending {
		ch <- reply{closed: true}
		delete(c.pending, ref)
	}
	c.reqMu.Unlock()
	// The hook queue stays: what the client sent before it went away is
	// the app's, and the worker posts it in order within the hook timeout.
	c.g.unregister(c)
	c.closeNow()
}

func (c *conn) subscriptionCount() int { return int(c.nsubs.Load()) }
