package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// TestConnSlowConsumer floods a topic with two subscribers, one of which
// stops reading (docs/protocol.md §8, docs/design.md, conventions §5: a broadcast never waits for a
// subscriber). The reading one gets every frame in seq order under either
// policy; the stalled one is closed with 1013 "Slow consumer" under the
// default policy and stays connected, missing frames, under DropSlow. No
// connection ever queues more than MaxBackpressure plus one frame.
func TestConnSlowConsumer(t *testing.T) {
	tests := []struct {
		name     string
		dropSlow bool
	}{
		{"the default policy closes a client that stops reading with 1013 and the other client gets every frame", false},
		{"the drop policy keeps a client that stops reading connected and the other client gets every frame", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const maxBP = 256 << 10
			cfg := testConfig()
			cfg.MaxBackpressure = maxBP
			cfg.SlowConsumer = slowConsumer(tt.dropSlow)
			cfg.WriteTimeout = time.Minute // the stalled write must not time out first
			g, srv := newTestGateway(t, cfg)

			data := []byte(`"` + strings.Repeat("x", 16<<10) + `"`)
			frameLen := int64(wire.EnvelopeSize("flood", "e", data, 1<<20))
			slow, fast := dialClient(t, srv), dialClient(t, srv)
			slow.subscribe("flood")
			fast.subscribe("flood")
			slowC, fastC := slow.serverConn(g), fast.serverConn(g)

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			fastLast, fastErr := readSeqs(ctx, fast)

			checkQueues := func() {
				t.Helper()
				for _, c := range []*conn{slowC, fastC} {
					if q := queuedBytes(c); q > maxBP+frameLen {
						t.Fatalf("connection queues %d bytes, over MaxBackpressure %d plus one frame of %d", q, maxBP, frameLen)
					}
				}
			}
			// The fast client is kept within a few frames of the publisher,
			// so only the stalled one can overflow.
			const window = 4
			var seq uint64
			publish := func() {
				t.Helper()
				testsvc.WaitFor(t, 10*time.Second, "the fast client to keep up", func() bool { return fastLast.Load()+window >= seq || len(fastErr) > 0 })
				seqs, err := g.Publish(ctx, []bus.Message{{Topic: "flood", Event: "e", Data: data}})
				if err != nil {
					t.Fatalf("publishing: %v", err)
				}
				seq = seqs[0]
				checkQueues()
			}
			drops := 0
			for seq < 20000 {
				q := queuedBytes(slowC)
				overflows := q > 0 && q+frameLen > maxBP
				publish()
				if overflows {
					drops++
				}
				if (!tt.dropSlow && isClosed(slowC)) || (tt.dropSlow && drops >= 3) {
					break
				}
			}
			if isClosed(slowC) == tt.dropSlow {
				t.Fatalf("after %d frames, stalled connection closed = %v under DropSlow %v", seq, isClosed(slowC), tt.dropSlow)
			}
			// The other subscriber keeps receiving.
			for range 10 {
				publish()
			}

			if !tt.dropSlow {
				for {
					_, err := slow.tryRead(ctx)
					if err == nil {
						continue // frames written before the close
					}
					var ce websocket.CloseError
					if !errors.As(err, &ce) || ce.Code != websocket.StatusTryAgainLater || ce.Reason != "Slow consumer" {
						t.Fatalf("stalled client ended with %v, want close 1013 \"Slow consumer\"", err)
					}
					break
				}
				testsvc.WaitFor(t, 10*time.Second, "the slow connection to be dropped", func() bool { return g.conns.get(slow.id) == nil })
			} else {
				// Reading again, the stalled client finds a gap but an open
				// connection, and delivery resumes once its queue drains.
				slowLast, slowErr := readSeqs(ctx, slow)
				testsvc.WaitFor(t, 10*time.Second, "the slow queue to empty", func() bool { return queuedBytes(slowC) == 0 || len(slowErr) > 0 })
				publish()
				testsvc.WaitFor(t, 10*time.Second, "the slow client to catch up", func() bool { return slowLast.Load() == seq || len(slowErr) > 0 })
				if err := firstErr(slowErr); !errors.Is(err, errGap) {
					t.Fatalf("stalled client: %v, want a gap in its seqs", err)
				}
				if isClosed(slowC) || g.conns.get(slow.id) == nil {
					t.Fatal("the drop policy closed the stalled client")
				}
			}
			testsvc.WaitFor(t, 10*time.Second, "the fast client to receive every frame", func() bool { return fastLast.Load() == seq || len(fastErr) > 0 })
			if err := firstErr(fastErr); err != nil {
				t.Fatalf("fast client: %v", err)
			}
		})
	}
}

// errGap is what readSeqs reports, once, when seqs skip values.
var errGap = errors.New("seqs skip values")

// readSeqs reads envelopes on a goroutine until the client closes, keeping
// the last seq. Its channel gets the first problem: errGap for a skipped
// seq (reading goes on), or an error that ends reading (a seq not
// increasing, the connection closing). It ends when the client is closed at
// cleanup.
func readSeqs(ctx context.Context, c *testClient) (*atomic.Uint64, chan error) {
	last := new(atomic.Uint64)
	errs := make(chan error, 1)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	go func() {
		for {
			fs, err := c.tryRead(ctx)
			if err != nil {
				report(err)
				return
			}
			for _, f := range fs {
				if f.Type != "" {
					continue
				}
				prev := last.Load()
				if f.Seq <= prev {
					report(fmt.Errorf("seq %d after %d", f.Seq, prev))
					return
				}
				if f.Seq != prev+1 {
					report(fmt.Errorf("seq %d after %d: %w", f.Seq, prev, errGap))
				}
				last.Store(f.Seq)
			}
		}
	}()
	return last, errs
}

// firstErr returns what readSeqs reported so far, or nil.
func firstErr(errs chan error) error {
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// TestConnEnqueue checks the outbound queue's limit without a write loop
// draining it: the first frame always fits, later ones only within
// MaxBackpressure, and an overflow closes (1013) or drops by policy.
func TestConnEnqueue(t *testing.T) {
	tests := []struct {
		name       string
		dropSlow   bool
		sizes      []int
		accepted   []bool
		wantClosed bool
	}{
		{
			name:  "under the close policy a frame that would overflow closes the connection with 1013 and empties its queue",
			sizes: []int{400, 400, 400, 10}, accepted: []bool{true, true, false, false}, wantClosed: true,
		},
		{
			name: "under the drop policy a frame that would overflow is dropped and later frames that fit are queued", dropSlow: true,
			sizes: []int{400, 400, 400, 150, 100}, accepted: []bool{true, true, false, true, false},
		},
		{
			name:  "a frame larger than the limit is accepted into an empty queue",
			sizes: []int{2000}, accepted: []bool{true},
		},
		{
			name:  "under the close policy any frame after an oversized one closes the connection",
			sizes: []int{2000, 10}, accepted: []bool{true, false}, wantClosed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxBackpressure = 1000
			cfg.SlowConsumer = slowConsumer(tt.dropSlow)
			g, srv := newTestGateway(t, cfg)
			client := dialClient(t, srv)
			c := client.serverConn(g)
			// Freeze draining: once welcome's write loop is gone, claim the
			// writer role so enqueue queues without starting one.
			testsvc.WaitFor(t, 5*time.Second, "the writer to go idle", func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				if c.writing {
					return false
				}
				c.writing = true
				return true
			})
			var want [][]byte
			for i, n := range tt.sizes {
				frame := []byte(`"` + strings.Repeat(string(rune('a'+i)), n-2) + `"`)
				if got := c.send(frame); got != tt.accepted[i] {
					t.Fatalf("frame %d (%d bytes): accepted %v, want %v", i, n, got, tt.accepted[i])
				}
				if tt.accepted[i] {
					want = append(want, frame)
				}
				if q := queuedBytes(c); q > cfg.MaxBackpressure+int64(n) {
					t.Fatalf("queued %d bytes after frame %d", q, i)
				}
			}
			if isClosed(c) != tt.wantClosed {
				t.Fatalf("closed = %v, want %v", isClosed(c), tt.wantClosed)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tt.wantClosed {
				c.mu.Lock()
				left, queued := len(c.queue), c.queued
				c.mu.Unlock()
				if left != 0 || queued != 0 {
					t.Fatalf("a closed connection keeps %d frames (%d bytes) queued", left, queued)
				}
				_, _, err := client.ws.Read(ctx)
				var ce websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.StatusTryAgainLater || ce.Reason != "Slow consumer" {
					t.Fatalf("client read %v, want close 1013 \"Slow consumer\"", err)
				}
				return
			}
			// Thaw: start the write loop enqueue would have started (writing
			// is still set), and it drains the queue in order.
			c.g.wg.Add(1)
			go c.writeLoop()
			for _, w := range want {
				_, b, err := client.ws.Read(ctx)
				if err != nil {
					t.Fatalf("reading queued frames: %v", err)
				}
				if string(b) != string(w) {
					t.Fatalf("read %.20q…, want %.20q…", b, w)
				}
			}
		})
	}
}

// TestConnIdleTimeout checks the idle drop (§2.5 rule 3): a client that
// sends nothing, pongs included, is dropped within IdleTimeout plus the
// sweeper's tick, and a client answering pings is not.
func TestConnIdleTimeout(t *testing.T) {
	const idle = 2 * time.Second
	tests := []struct {
		name      string
		answering bool
	}{
		{"a client that never reads nor answers pings is dropped within the idle timeout", false},
		{"a client that answers pings stays connected past the idle timeout", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.IdleTimeout = idle
			cfg.PingInterval = idle / 4
			g, srv := newTestGateway(t, cfg)
			if !tt.answering {
				rawClient(t, srv)
				// The 101 goes out before the gateway registers the socket.
				testsvc.WaitFor(t, 2*time.Second, "the connection", func() bool { return g.conns.count() == 1 })
				testsvc.WaitFor(t, idle+2*time.Second, "the idle connection to be dropped", func() bool { return g.conns.count() == 0 })
				return
			}
			client := dialClient(t, srv)
			sc := client.serverConn(g)
			start := sc.lastRead.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// coder/websocket answers pings while a read is pending.
			_, readErr := readSeqs(ctx, client)
			// A pong more than two idle timeouts after the upgrade proves
			// the connection outlived the deadline it would have had.
			testsvc.WaitFor(t, 4*idle, "reads past twice the idle timeout", func() bool { return sc.lastRead.Load()-start > int64(2*idle) || len(readErr) > 0 })
			if g.conns.get(client.id) == nil || len(readErr) > 0 {
				t.Fatalf("the answering client was dropped: %v", firstErr(readErr))
			}
		})
	}
}

// TestConnRequest checks the request/reply path (§3.4): a reply settles the
// request, and it fails with errConnectionClosed when the client goes away,
// errLegacyConnection for a legacy client and errRequestTimeout when nobody
// answers.
func TestConnRequest(t *testing.T) {
	tests := []struct {
		name    string
		current bool
		timeout time.Duration
		before  func(t *testing.T, g *Gateway, c *testClient) // before the request
		client  func(t *testing.T, c *testClient, ref string) // after the client read it
		wantErr error
		check   func(t *testing.T, r reply)
	}{
		{
			name: "a reply with data settles the request", current: true,
			client: func(t *testing.T, c *testClient, ref string) {
				c.write(context.Background(), `{"type":"reply","ref":`+ref+`,"data":{"ok":true}}`)
			},
			check: func(t *testing.T, r reply) {
				if string(r.data) != `{"ok":true}` || r.err != "" {
					t.Fatalf("reply %+v, want data {\"ok\":true}", r)
				}
			},
		},
		{
			name: "a reply with an error settles the request with that error", current: true,
			client: func(t *testing.T, c *testClient, ref string) {
				c.write(context.Background(), `{"type":"reply","ref":`+ref+`,"error":"no"}`)
			},
			check: func(t *testing.T, r reply) {
				if r.err != "no" {
					t.Fatalf("reply %+v, want error no", r)
				}
			},
		},
		{
			name: "a client that disconnects while the request waits fails it with errConnectionClosed", current: true,
			client:  func(t *testing.T, c *testClient, ref string) { c.ws.CloseNow() },
			wantErr: errConnectionClosed,
		},
		{
			name: "a request to a connection that already closed fails with errConnectionClosed", current: true,
			before: func(t *testing.T, g *Gateway, c *testClient) {
				c.ws.CloseNow()
				testsvc.WaitFor(t, 5*time.Second, "the connection to be removed", func() bool { return g.conns.get(c.id) == nil })
			},
			wantErr: errConnectionClosed,
		},
		{
			name:    "a request to a legacy connection fails at once",
			wantErr: errLegacyConnection,
		},
		{
			name: "a request nobody answers times out", current: true, timeout: 200 * time.Millisecond,
			client:  func(t *testing.T, c *testClient, ref string) {},
			wantErr: errRequestTimeout,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, srv := newTestGateway(t, testConfig())
			var caps []string
			if tt.current {
				caps = []string{"batch"}
			}
			client := dialClient(t, srv, caps...)
			sc := client.serverConn(g)
			testsvc.WaitFor(t, 5*time.Second, "the client generation", func() bool { return sc.current.Load() == tt.current })
			if tt.before != nil {
				tt.before(t, g, client)
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			type result struct {
				r   reply
				err error
			}
			done := make(chan result, 1)
			go func() {
				r, err := sc.request(ctx, "confirm", []byte(`{"op":"x"}`))
				done <- result{r, err}
			}()
			if tt.client != nil {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer rcancel()
				f := client.read(rctx)
				if len(f) != 1 || f[0].Type != "request" || f[0].Event != "confirm" || string(f[0].Data) != `{"op":"x"}` {
					t.Fatalf("client got %+v, want the request", f)
				}
				var ref uint64
				if err := json.Unmarshal(f[0].Ref, &ref); err != nil || ref == 0 {
					t.Fatalf("request ref %s is not a positive number", f[0].Ref)
				}
				tt.client(t, client, string(f[0].Ref))
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("the request never returned")
			}
			if !errors.Is(res.err, tt.wantErr) {
				t.Fatalf("request error %v, want %v", res.err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, res.r)
			}
			sc.reqMu.Lock()
			pending := len(sc.pending)
			sc.reqMu.Unlock()
			if pending != 0 {
				t.Fatalf("%d requests still pending after the request returned", pending)
			}
		})
	}
}

// A client with the batch cap gets a run of queued envelopes as batch
// frames (§7.2): in order, never with a control frame inside, never over
// MaxBatchFrame, and a lone envelope stays plain.
func TestCoalesceEnvelopes(t *testing.T) {
	env := func(i int, size int) outFrame {
		data := strings.Repeat("x", size)
		return outFrame{b: wire.AppendEnvelope(nil, "t", "e", []byte(`"`+data+`"`), uint64(i))}
	}
	ctl := outFrame{b: []byte(`{"type":"subscribed","topic":"t","ref":1}`)}
	frames := []outFrame{env(1, 10), env(2, 10), env(3, 10), ctl, env(4, 10), ctl, env(5, 10)}

	var got []string
	for i := 0; i < len(frames); {
		b, k, buf := coalesceEnvelopes(frames[i:], math.MaxInt)
		got = append(got, string(b))
		putBatchBuf(buf, b)
		i += k
	}
	want := []string{
		`{"type":"batch","events":[` + string(frames[0].b) + "," + string(frames[1].b) + "," + string(frames[2].b) + `]}`,
		string(ctl.b), string(frames[4].b), string(ctl.b), string(frames[6].b),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("frames:\n got  %q\n want %q", got, want)
	}

	// 100 KiB envelopes: two fit in one 256 KiB batch frame, the fifth
	// goes alone and plain.
	big := make([]outFrame, 5)
	for i := range big {
		big[i] = env(i+1, 100<<10)
	}
	var sizes []int
	for i := 0; i < len(big); {
		b, k, buf := coalesceEnvelopes(big[i:], math.MaxInt)
		if len(b) > wire.MaxBatchFrame {
			t.Fatalf("batch frame of %d bytes", len(b))
		}
		sizes = append(sizes, k)
		putBatchBuf(buf, b)
		i += k
	}
	if !slices.Equal(sizes, []int{2, 2, 1}) {
		t.Fatalf("frames per write %v, want [2 2 1]", sizes)
	}
}

// A batch publish larger than max_backpressure reaches a client whose queue
// was empty, whole: its frames are queued as one unit (as one frame would
// be), not cut off halfway with a 1013 to a client that reads at once.
func TestConnBatchPublishLargerThanBackpressure(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBackpressure = 64 << 10
	g, srv := newTestGateway(t, cfg)
	current, legacy := dialClient(t, srv, "batch"), dialClient(t, srv)
	current.subscribe("big")
	legacy.subscribe("big")

	data := []byte(`"` + strings.Repeat("x", 4<<10) + `"`)
	msgs := make([]bus.Message, 300) // ~1.2 MiB: five batch frames, or 300 envelopes
	for i := range msgs {
		msgs[i] = bus.Message{Topic: "big", Event: "e", Data: data}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := g.Publish(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{current, legacy} {
		for got := 0; got < len(msgs); {
			fs, err := c.tryRead(ctx)
			if err != nil {
				t.Fatalf("after %d of %d events: %v", got, len(msgs), err)
			}
			for _, f := range fs {
				got++
				if f.Seq != uint64(got) {
					t.Fatalf("event %d has seq %d", got, f.Seq)
				}
			}
		}
	}
}
