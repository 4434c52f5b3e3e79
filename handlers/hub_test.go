package handlers

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// orderClient is one subscriber of an ordering test.
type orderClient struct {
	caps   []string // nil: legacy
	topics []string
}

// TestHubPublishOrder checks docs/protocol.md §5.1 rule 6 under concurrent
// publishers: every connection sees each topic's seqs as 1, 2, 3, … with no
// gap and no duplicate, whether frames arrive plain or in batch frames, and
// concurrent batch publishes over several topics never deadlock.
func TestHubPublishOrder(t *testing.T) {
	tests := []struct {
		name       string
		clients    []orderClient
		publishers int
		rounds     int
		// publish returns publisher p's i-th publish: one message, or a batch.
		publish func(p, i int) []bus.Message
	}{
		{
			name: "concurrent single publishes reach every subscriber in seq order without gaps",
			clients: []orderClient{
				{nil, []string{"t"}},
				{nil, []string{"t"}},
				{[]string{"batch"}, []string{"t"}},
				{[]string{"batch"}, []string{"t"}},
			},
			publishers: 8,
			rounds:     200,
			publish: func(p, i int) []bus.Message {
				return []bus.Message{{Topic: "t", Event: "e", Data: []byte(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i))}}
			},
		},
		{
			name: "batch publishes on two topics interleaved with singles keep per-topic order and never deadlock",
			clients: []orderClient{
				{[]string{"batch"}, []string{"a", "b"}},
				{[]string{"batch"}, []string{"b", "a"}},
				{[]string{"batch"}, []string{"a"}},
				{nil, []string{"a", "b"}},
				{nil, []string{"b"}},
			},
			publishers: 8,
			rounds:     150,
			publish: func(p, i int) []bus.Message {
				m := func(topic string) bus.Message {
					return bus.Message{Topic: topic, Event: "e", Data: []byte(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i))}
				}
				switch p % 4 {
				case 0:
					return []bus.Message{m("a"), m("b"), m("a"), m("b")}
				case 1:
					return []bus.Message{m("b"), m("a"), m("b")}
				case 2:
					return []bus.Message{m("a")}
				default:
					return []bus.Message{m("b")}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, srv := newTestGateway(t, testConfig())
			totals := map[string]uint64{}
			for p := 0; p < tt.publishers; p++ {
				for i := 0; i < tt.rounds; i++ {
					for _, m := range tt.publish(p, i) {
						totals[m.Topic]++
					}
				}
			}
			clients := make([]*testClient, len(tt.clients))
			for i, spec := range tt.clients {
				clients[i] = dialClient(t, srv, spec.caps...)
				for _, topic := range spec.topics {
					clients[i].subscribe(topic)
				}
			}

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var readers sync.WaitGroup
			errs := make(chan error, len(clients))
			for i, c := range clients {
				readers.Add(1)
				go func() {
					defer readers.Done()
					errs <- readInOrder(ctx, c, tt.clients[i].topics, totals)
				}()
			}

			published := make(chan struct{})
			var publishers sync.WaitGroup
			type stamp struct {
				topic string
				seq   uint64
			}
			stamps := make([][]stamp, tt.publishers)
			for p := 0; p < tt.publishers; p++ {
				publishers.Add(1)
				go func() {
					defer publishers.Done()
					for i := 0; i < tt.rounds; i++ {
						msgs := tt.publish(p, i)
						seqs, err := g.Publish(ctx, msgs)
						if err != nil {
							t.Errorf("publishing: %v", err)
							return
						}
						for j, m := range msgs {
							stamps[p] = append(stamps[p], stamp{m.Topic, seqs[j]})
						}
					}
				}()
			}
			go func() { publishers.Wait(); close(published) }()
			select {
			case <-published:
			case <-ctx.Done():
				t.Fatal("publishers did not finish: deadlock")
			}

			readers.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			// Each topic's stamps are exactly 1..total across publishers,
			// and rise within each publisher's sequential publishes.
			seen := map[string]map[uint64]bool{}
			for p, ss := range stamps {
				last := map[string]uint64{}
				for _, st := range ss {
					if st.seq <= last[st.topic] {
						t.Fatalf("publisher %d on %q: stamped %d after %d", p, st.topic, st.seq, last[st.topic])
					}
					last[st.topic] = st.seq
					if seen[st.topic] == nil {
						seen[st.topic] = map[uint64]bool{}
					}
					if seen[st.topic][st.seq] {
						t.Fatalf("seq %d stamped twice on %q", st.seq, st.topic)
					}
					seen[st.topic][st.seq] = true
				}
			}
			for topic, n := range totals {
				for v := uint64(1); v <= n; v++ {
					if !seen[topic][v] {
						t.Fatalf("seq %d never stamped on %q (%d events)", v, topic, n)
					}
				}
			}
		})
	}
}

// readInOrder reads until every topic reached its total, requiring each
// frame's seq to be exactly the previous one plus one.
func readInOrder(ctx context.Context, c *testClient, topics []string, totals map[string]uint64) error {
	last := map[string]uint64{}
	done := func() bool {
		for _, topic := range topics {
			if last[topic] < totals[topic] {
				return false
			}
		}
		return true
	}
	for !done() {
		fs, err := c.tryRead(ctx)
		if err != nil {
			return fmt.Errorf("client %s after %v: %w", c.id, last, err)
		}
		for _, f := range fs {
			if f.Type != "" {
				continue // heartbeat or other control frame
			}
			if f.Seq != last[f.Topic]+1 {
				return fmt.Errorf("client %s on %q: seq %d after %d", c.id, f.Topic, f.Seq, last[f.Topic])
			}
			last[f.Topic] = f.Seq
		}
	}
	for topic, n := range last {
		if n != totals[topic] {
			return fmt.Errorf("client %s on %q got up to seq %d, want %d", c.id, topic, n, totals[topic])
		}
	}
	return nil
}

// TestHubSubscribeChurnDuringPublish subscribes and unsubscribes clients
// while two publishers flood the topic (run it under -race): what each
// client receives keeps increasing seqs (gaps are the unsubscribed spells),
// and the final subscription state is the last frame sent (§3.5).
func TestHubSubscribeChurnDuringPublish(t *testing.T) {
	g, srv := newTestGateway(t, testConfig())
	const churners, flips, publishers, rounds = 4, 60, 2, 400
	clients := make([]*testClient, churners)
	for i := range clients {
		caps := []string{"batch"}
		if i%2 == 1 {
			caps = nil
		}
		clients[i] = dialClient(t, srv, caps...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	final := uint64(publishers*rounds + 1)
	var wg sync.WaitGroup
	errs := make(chan error, 2*churners)
	acked := make([]chan struct{}, churners)
	for i, c := range clients {
		acked[i] = make(chan struct{})
		wg.Add(2)
		go func() { // reader
			defer wg.Done()
			var last uint64
			for {
				fs, err := c.tryRead(ctx)
				if err != nil {
					errs <- fmt.Errorf("client %s after seq %d: %w", c.id, last, err)
					return
				}
				for _, f := range fs {
					if f.Type == "subscribed" && string(f.Ref) == "99" {
						close(acked[i])
					}
					if f.Type != "" {
						continue
					}
					if f.Seq <= last {
						errs <- fmt.Errorf("client %s: seq %d after %d", c.id, f.Seq, last)
						return
					}
					last = f.Seq
					if f.Seq == final {
						return
					}
				}
			}
		}()
		go func() { // churner, without refs (no acks) until the last frame
			defer wg.Done()
			for i := 0; i < flips; i++ {
				typ := "subscribe"
				if i%2 == 1 {
					typ = "unsubscribe"
				}
				msg := `{"type":"` + typ + `","topic":"churn"}`
				if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					errs <- fmt.Errorf("client %s writing: %w", c.id, err)
					return
				}
			}
			msg := `{"type":"subscribe","topic":"churn","ref":99}`
			if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				errs <- fmt.Errorf("client %s writing: %w", c.id, err)
			}
		}()
	}
	var pubs sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; i < rounds; i++ {
				if _, err := g.Publish(ctx, []bus.Message{{Topic: "churn", Event: "e", Data: []byte(`1`)}}); err != nil {
					t.Errorf("publishing: %v", err)
					return
				}
			}
		}()
	}
	pubs.Wait()
	// The ack of each client's last frame, a subscribe, means its read loop
	// has processed every flip.
	for i, ch := range acked {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("client %d: no ack for its last subscribe", i)
		}
	}
	tp := g.hub.lookup("churn", false)
	tp.mu.Lock()
	subs := len(tp.subs)
	tp.mu.Unlock()
	if subs != churners {
		t.Fatalf("the hub holds %d subscribers after the churn, want %d", subs, churners)
	}
	if seqs, err := g.Publish(ctx, []bus.Message{{Topic: "churn", Event: "last"}}); err != nil || seqs[0] != final {
		t.Fatalf("final publish stamped %v (%v), want %d", seqs, err, final)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestHubBatchPublishDoesNotDeadlockWithIndexScans runs batch publishes over
// two topics of one shard against the sweeper's index scans. A batch must
// not look a topic up (taking its shard's lock) while it holds another
// topic's lock: sweep and topicCount take the shard lock first, then topic
// locks (hub.go's lock order).
func TestHubBatchPublishDoesNotDeadlockWithIndexScans(t *testing.T) {
	h := newHub(nil, nil)
	// Two names in one shard, a sorting first so the batch locks it first.
	a, b := "a", ""
	for i := 0; b == ""; i++ {
		if name := fmt.Sprintf("b%d", i); h.shard(name) == h.shard(a) {
			b = name
		}
	}
	const publishers, rounds = 2, 20000
	done := make(chan struct{})
	stop := make(chan struct{})
	var wg, pubs sync.WaitGroup
	for range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; i < rounds; i++ {
				h.publish([]bus.Message{{Topic: a, Event: "e"}, {Topic: b, Event: "e"}}, true, nil, time.Now())
			}
		}()
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		defer close(done)
		pubs.Wait()
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Idle 0 and a later now: every topic without subscribers goes,
			// so batches keep recreating them (a shard write lock each).
			h.sweep(time.Now().Add(time.Hour), 0)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.topicCount()
		}
	}()
	select {
	case <-done:
		close(stop)
		wg.Wait()
	case <-time.After(20 * time.Second):
		// The goroutines stay blocked; the leak check reports them too.
		t.Fatal("batch publish deadlocked against the index scans")
	}
}

// TestSplitBatches checks §7.2's packing: batch frames keep envelope order,
// stay within MaxBatchFrame, and a group of one is the plain envelope.
func TestSplitBatches(t *testing.T) {
	env := func(i, size int) []byte {
		data := fmt.Sprintf(`"%s"`, strings.Repeat("x", size))
		return wire.AppendEnvelope(nil, "t", "e", []byte(data), uint64(i+1))
	}
	many := func(n, size int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = env(i, size)
		}
		return out
	}
	tests := []struct {
		name   string
		envs   [][]byte
		frames int // expected frame count
	}{
		{"no envelopes give no frames", nil, 0},
		{"one envelope is sent plain", many(1, 10), 1},
		{"a few small envelopes share one batch frame", many(5, 10), 1},
		{"envelopes over 256 KiB in total are split into several batch frames", many(100, 10<<10), 4},
		{"one envelope alone over 256 KiB is sent plain between batches", [][]byte{env(0, 10), env(1, 10), env(2, 300<<10), env(3, 10), env(4, 10)}, 3},
		{"a large envelope after a small one leaves the small one plain", [][]byte{env(0, 10), env(1, 300<<10)}, 2},
		{"envelopes that fill a frame to the limit are split before it overflows", many(2, wire.MaxBatchFrame/2-40), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := splitBatches(tt.envs)
			if len(frames) != tt.frames {
				t.Fatalf("got %d frames, want %d", len(frames), tt.frames)
			}
			var got [][]byte
			for _, f := range frames {
				if !isBatchFrame(f) {
					// Plain: the envelope itself, not a copy.
					if len(got) >= len(tt.envs) || &f[0] != &tt.envs[len(got)][0] {
						t.Fatalf("plain frame %.40q is not the next envelope", f)
					}
					got = append(got, f)
					continue
				}
				if len(f) > wire.MaxBatchFrame {
					t.Fatalf("batch frame of %d bytes exceeds %d", len(f), wire.MaxBatchFrame)
				}
				evs := decodeFrame(t, f)
				if len(evs) < 2 {
					t.Fatalf("batch frame of %d envelopes; a group of one must be plain", len(evs))
				}
				inner := f[len(wire.BatchOpen) : len(f)-len(wire.BatchClose)]
				n := len(got)
				got = append(got, tt.envs[n:n+len(evs)]...)
				if !bytes.Equal(inner, bytes.Join(tt.envs[n:n+len(evs)], []byte(","))) {
					t.Fatalf("batch frame does not hold envelopes %d..%d verbatim", n, n+len(evs)-1)
				}
			}
			if len(got) != len(tt.envs) {
				t.Fatalf("frames hold %d envelopes, want %d", len(got), len(tt.envs))
			}
		})
	}
}

// memGateway is a gateway for socketless connections: its backpressure
// limit is never reached.
func memGateway(t testing.TB) *Gateway {
	t.Helper()
	cfg := testConfig()
	cfg.MaxBackpressure = 1 << 40
	g, _ := newTestGateway(t, cfg)
	return g
}

// TestHubBatchPublishEncodesEachSubsequenceOnce checks that a batch publish
// over several topics builds one batch frame per distinct set of events and
// shares it: connections with the same subscriptions get the same backing
// array, and plain envelopes are the shared per-event encodings.
func TestHubBatchPublishEncodesEachSubsequenceOnce(t *testing.T) {
	g := memGateway(t)
	x, y := newMemConn(g, true), newMemConn(g, true)   // a and b, batch
	z := newMemConn(g, true)                           // a only, batch
	l, w := newMemConn(g, false), newMemConn(g, false) // legacy: a and b; a
	for _, s := range []struct {
		c      *conn
		topics []string
	}{{x, []string{"a", "b"}}, {y, []string{"b", "a"}}, {z, []string{"a"}}, {l, []string{"a", "b"}}, {w, []string{"a"}}} {
		for _, topic := range s.topics {
			g.hub.subscribe(topic, s.c, nil)
		}
	}
	g.hub.publish([]bus.Message{{Topic: "a", Event: "1"}, {Topic: "b", Event: "2"}, {Topic: "a", Event: "3"}}, true, nil, time.Now())

	fx, fy, fz, fl, fw := memFrames(x), memFrames(y), memFrames(z), memFrames(l), memFrames(w)
	if len(fx) != 1 || len(fy) != 1 || len(fz) != 1 || len(fl) != 3 || len(fw) != 2 {
		t.Fatalf("frame counts x=%d y=%d z=%d l=%d w=%d, want 1 1 1 3 2", len(fx), len(fy), len(fz), len(fl), len(fw))
	}
	if &fx[0][0] != &fy[0][0] {
		t.Error("connections subscribed to the same topics got separately encoded batch frames")
	}
	if &fz[0][0] == &fx[0][0] {
		t.Error("a connection subscribed to fewer topics got the full batch frame")
	}
	if got := decodeFrame(t, fz[0]); len(got) != 2 || got[0].Event != "1" || got[1].Event != "3" {
		t.Errorf("a-only batch frame holds %+v, want events 1 and 3", got)
	}
	if &fw[0][0] != &fl[0][0] || &fw[1][0] != &fl[2][0] {
		t.Error("plain envelopes of one event are not shared between connections")
	}
}

// TestHubBatchPublishKeepsTopicsApartInHugeBatches publishes a batch of more
// than 65536 events, as a 4 MiB API body allows. Connections with different
// subscriptions must each get only their own topics' events, whatever the
// events' positions (the per-subset frame cache must not confuse index 0
// with index 65536).
func TestHubBatchPublishKeepsTopicsApartInHugeBatches(t *testing.T) {
	g := memGateway(t)
	x, y := newMemConn(g, true), newMemConn(g, true)
	g.hub.subscribe("a", x, nil)
	g.hub.subscribe("b", y, nil)
	const n = 1<<16 + 2
	msgs := make([]bus.Message, n)
	for i := range msgs {
		msgs[i] = bus.Message{Topic: "filler", Event: "e"}
	}
	msgs[0].Topic, msgs[1].Topic = "a", "a"
	msgs[n-2].Topic, msgs[n-1].Topic = "b", "b"
	g.hub.publish(msgs, true, nil, time.Now())
	for _, tc := range []struct {
		c     *conn
		topic string
	}{{x, "a"}, {y, "b"}} {
		var got []string
		for _, f := range memFrames(tc.c) {
			for _, e := range decodeFrame(t, f) {
				got = append(got, e.Topic)
			}
		}
		if len(got) != 2 || got[0] != tc.topic || got[1] != tc.topic {
			t.Errorf("subscriber of %q received topics %v", tc.topic, got)
		}
	}
}

// TestHubPublishDoesNotAllocatePerSubscriber checks the fan-out's hot path
// (docs/design.md, conventions §6): a publish allocates a constant amount, however many connections
// subscribe.
func TestHubPublishDoesNotAllocatePerSubscriber(t *testing.T) {
	g := memGateway(t)
	allocs := func(subs int) float64 {
		topic := fmt.Sprintf("alloc-%d", subs)
		conns := make([]*conn, subs)
		for i := range conns {
			conns[i] = newMemConn(g, i%2 == 0)
			g.hub.subscribe(topic, conns[i], nil)
		}
		msgs := []bus.Message{{Topic: topic, Event: "e", Data: []byte(`{"id":1}`)}}
		now := time.Now()
		return testing.AllocsPerRun(100, func() {
			msgs[0].Seq = 0
			g.hub.publish(msgs, true, nil, now)
			for _, c := range conns { // what a write loop would do, minus the socket
				c.mu.Lock()
				clear(c.queue)
				c.queue, c.queued = c.queue[:0], 0
				c.mu.Unlock()
			}
		})
	}
	few, many := allocs(10), allocs(1000)
	if many != few {
		t.Fatalf("a publish allocates %v times to 10 subscribers and %v times to 1000", few, many)
	}
	if few > 1 {
		t.Errorf("a publish allocates %v times, want 1 (the shared frame)", few)
	}
}
