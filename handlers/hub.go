package handlers

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// hubShards spreads the topic index over independent locks so subscribes on
// different topics do not contend (centrifuge uses 64 as well).
const hubShards = 64

// hub is the topic index of one gateway: topic → subscribed connections,
// plus the per-instance seq counter of each topic (docs/protocol.md §5.1).
//
// Lock order: shard.mu, then topic.mu, then conn.mu (the outbound queue, a
// leaf lock). A publish holds its topic's lock while it stamps and enqueues,
// which is what keeps every connection's frames of one topic in seq order
// across concurrent publishers; enqueueing never blocks, so the hold is short.
type hub struct {
	seed   maphash.Seed
	shards [hubShards]hubShard

	// stamp assigns the seq of a message on a topic buffered in memory
	// (its replay store's counter); handled false leaves it to the topic's
	// own counter. It runs under the topic lock, so stamping and enqueueing
	// stay one step; it must do no network I/O.
	stamp func(m *bus.Message) (handled bool, err error)

	// ordered reports whether a topic's seqs come from a shared store
	// (order.go): its deliveries are put in seq order and gaps filled.
	ordered func(topic string) bool
}

type hubShard struct {
	mu     sync.RWMutex
	topics map[string]*topic
}

type topic struct {
	name string

	mu      sync.Mutex
	subs    map[*conn]struct{}
	list    []*conn // snapshot of subs for fan-out; nil when stale
	seq     uint64
	lastPub time.Time
	// pubs counts the events delivered on the topic; sampled is its value
	// at the dashboard's last sample (topStats), which turns it into a
	// rate without a map of every topic.
	pubs, sampled uint64
	dead          bool // removed from the index; holders must look up again

	order order // ordered topics only: what was delivered, what waits
}

func newHub(stamp func(m *bus.Message) (bool, error), ordered func(string) bool) *hub {
	if stamp == nil {
		stamp = func(*bus.Message) (bool, error) { return false, nil }
	}
	if ordered == nil {
		ordered = func(string) bool { return false }
	}
	h := &hub{seed: maphash.MakeSeed(), stamp: stamp, ordered: ordered}
	for i := range h.shards {
		h.shards[i].topics = make(map[string]*topic)
	}
	return h
}

func (h *hub) shard(name string) *hubShard {
	return &h.shards[maphash.String(h.seed, name)%hubShards]
}

// lookup returns the topic, creating it when create is set.
func (h *hub) lookup(name string, create bool) *topic {
	s := h.shard(name)
	s.mu.RLock()
	t := s.topics[name]
	s.mu.RUnlock()
	if t != nil || !create {
		return t
	}
	s.mu.Lock()
	if t = s.topics[name]; t == nil {
		t = &topic{name: name, subs: make(map[*conn]struct{})}
		t.order.on = h.ordered(name)
		s.topics[name] = t
	}
	s.mu.Unlock()
	return t
}

// lockLive returns the topic locked, retrying if a sweep removed it between
// lookup and lock.
func (h *hub) lockLive(name string) *topic {
	for {
		t := h.lookup(name, true)
		t.mu.Lock()
		if !t.dead {
			return t
		}
		t.mu.Unlock()
	}
}

// subscribe adds c to name's subscribers; it reports false if c already was.
// then, if set, runs under the topic lock after c is attached, so no frame
// of the topic reaches c before it took effect (a resume's hold).
func (h *hub) subscribe(name string, c *conn, then func()) bool {
	t := h.lockLive(name)
	defer t.mu.Unlock()
	if _, ok := t.subs[c]; ok {
		return false
	}
	t.subs[c] = struct{}{}
	t.list = nil
	if then != nil {
		then()
	}
	return true
}

func (h *hub) unsubscribe(name string, c *conn) {
	t := h.lookup(name, false)
	if t == nil {
		return
	}
	t.mu.Lock()
	if _, ok := t.subs[c]; ok {
		delete(t.subs, c)
		t.list = nil
	}
	t.mu.Unlock()
}

// locked runs fn under name's topic lock: nothing is delivered on the
// topic meanwhile, so what fn enqueues precedes every later frame of it
// (docs/protocol.md §5.3, §5.4). fn must not block: no store or network call.
func (h *hub) locked(name string, fn func(t *topic)) {
	t := h.lockLive(name)
	defer t.mu.Unlock()
	fn(t)
}

// head returns the last seq stamped on name by this instance.
func (h *hub) head(name string) uint64 {
	t := h.lookup(name, false)
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seq
}

// subscribers returns the number of name's subscribers on this instance.
func (h *hub) subscribers(name string) int {
	t := h.lookup(name, false)
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.subs)
}

func (t *topic) snapshot() []*conn {
	if t.list == nil {
		t.list = make([]*conn, 0, len(t.subs))
		for c := range t.subs {
			t.list = append(t.list, c)
		}
	}
	return t.list
}

// publish stamps (when stamp is set, the message has no seq yet and
// unstamped[i] is not set) and delivers msgs in order. A batch of several messages reaches batch-capable
// connections as batch frames (§7.2), everyone else as plain envelopes. It
// returns the number of enqueued frames.
func (h *hub) publish(msgs []bus.Message, stamp bool, unstamped []bool, now time.Time) (int, error) {
	if len(msgs) == 1 {
		m := &msgs[0]
		t := h.lockLive(m.Topic)
		if stamp && m.Seq == 0 {
			if err := h.stampOne(t, m, noSeq(unstamped, 0)); err != nil {
				t.mu.Unlock()
				return 0, err
			}
		}
		n := t.deliverLocked(m, now)
		t.mu.Unlock()
		return n, nil
	}
	return h.publishBatch(msgs, stamp, unstamped, now)
}

// deliverLocked encodes m once and enqueues it to every subscriber; t is
// locked. It returns the number of enqueued frames.
func (t *topic) deliverLocked(m *bus.Message, now time.Time) int {
	t.lastPub = now
	t.pubs++
	frame := wire.AppendEnvelope(make([]byte, 0, wire.EnvelopeSize(m.Topic, m.Event, m.Data, m.Seq)), m.Topic, m.Event, m.Data, m.Seq)
	n := 0
	for _, c := range t.snapshot() {
		if c.admit(m.Topic, m.Seq, frame) && c.enqueue(frame, now) {
			n++
		}
	}
	return n
}

// stampOne gives m its seq: from its replay store when the topic has one
// (buffered topics always stamp, §5.1 rule 4), else from the topic's own
// counter unless sequencing is off for it.
func (h *hub) stampOne(t *topic, m *bus.Message, off bool) error {
	handled, err := h.stamp(m)
	if err != nil || handled {
		return err
	}
	if !off {
		t.seq++
		m.Seq = t.seq
	}
	return nil
}

// publishBatch locks every topic of the batch (in name order, so concurrent
// batches cannot deadlock), stamps each message in order, then enqueues per
// connection the subsequence it subscribes to.
func (h *hub) publishBatch(msgs []bus.Message, stamp bool, unstamped []bool, now time.Time) (int, error) {
	names := make([]string, 0, len(msgs))
	for i := range msgs {
		names = append(names, msgs[i].Topic)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	locked := make(map[string]*topic, len(names))
	for !h.lockAll(names, locked) {
		// A topic was swept between lookup and lock: look them up again.
	}
	defer func() {
		for _, t := range locked {
			t.mu.Unlock()
		}
	}()
	envs := make([][]byte, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		t := locked[m.Topic]
		if stamp && m.Seq == 0 {
			if err := h.stampOne(t, m, noSeq(unstamped, i)); err != nil {
				// Earlier events of the batch are stamped and stored;
				// deliver them so no stored event goes unsent.
				msgs, envs = msgs[:i], envs[:i]
				n, _ := h.deliverBatch(msgs, envs, names, locked, now)
				return n, err
			}
		}
		t.lastPub = now
		t.pubs++
		envs[i] = wire.AppendEnvelope(make([]byte, 0, wire.EnvelopeSize(m.Topic, m.Event, m.Data, m.Seq)), m.Topic, m.Event, m.Data, m.Seq)
	}
	return h.deliverBatch(msgs, envs, names, locked, now)
}

// deliverBatch enqueues encoded envelopes with every topic still locked.
func (h *hub) deliverBatch(msgs []bus.Message, envs [][]byte, names []string, locked map[string]*topic, now time.Time) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	// One topic (the common case): every subscriber gets the same frames.
	if len(names) == 1 {
		batches := splitBatches(envs)
		n := 0
		for _, c := range locked[names[0]].snapshot() {
			if c.filtered.Load() {
				n += c.enqueueAbove(msgs, envs, nil, now)
				continue
			}
			if c.batchCap.Load() {
				n += c.enqueueAll(batches, now)
				continue
			}
			n += c.enqueueAll(envs, now)
		}
		return n, nil
	}
	// Several topics: group connections by the subset of events they
	// receive, so each distinct batch frame is encoded once.
	type want struct {
		idx []int
	}
	perConn := make(map[*conn]*want)
	var order []*conn
	for i := range msgs {
		for _, c := range locked[msgs[i].Topic].snapshot() {
			w := perConn[c]
			if w == nil {
				w = &want{}
				perConn[c] = w
				order = append(order, c)
			}
			w.idx = append(w.idx, i)
		}
	}
	cache := make(map[string][][]byte)
	n := 0
	for _, c := range order {
		w := perConn[c]
		if c.filtered.Load() {
			n += c.enqueueAbove(msgs, envs, w.idx, now)
			continue
		}
		if !c.batchCap.Load() || len(w.idx) == 1 {
			for _, i := range w.idx {
				if c.enqueue(envs[i], now) {
					n++
				}
			}
			continue
		}
		key := indexKey(w.idx)
		batches, ok := cache[key]
		if !ok {
			sub := make([][]byte, len(w.idx))
			for j, i := range w.idx {
				sub[j] = envs[i]
			}
			batches = splitBatches(sub)
			cache[key] = batches
		}
		n += c.enqueueAll(batches, now)
	}
	return n, nil
}

// lockAll looks up the topics of names (sorted, distinct), then locks them
// in that order. Every lookup comes before the first topic lock because a
// lookup may take a shard lock, which the lock order puts first: sweep and
// topicCount hold a shard lock while locking its topics, so a lookup under
// a topic lock deadlocks against them
// (TestHubBatchPublishDoesNotDeadlockWithIndexScans). It reports false, with
// nothing locked, if a topic turned out dead.
func (h *hub) lockAll(names []string, locked map[string]*topic) bool {
	for _, n := range names {
		locked[n] = h.lookup(n, true)
	}
	for i, n := range names {
		t := locked[n]
		t.mu.Lock()
		if t.dead {
			for _, m := range names[:i+1] {
				locked[m].mu.Unlock()
			}
			return false
		}
	}
	return true
}

func noSeq(unstamped []bool, i int) bool { return i < len(unstamped) && unstamped[i] }

// splitBatches packs envelopes into batch frames of at most MaxBatchFrame
// bytes, in order; a group of one is sent as the plain envelope (§7.2).
func splitBatches(envs [][]byte) [][]byte {
	var out [][]byte
	start, size := 0, len(wire.BatchOpen)+len(wire.BatchClose)
	flush := func(end int) {
		if end-start == 1 {
			out = append(out, envs[start])
		} else if end > start {
			out = append(out, wire.AppendBatch(make([]byte, 0, size), envs[start:end]))
		}
		start, size = end, len(wire.BatchOpen)+len(wire.BatchClose)
	}
	for i, e := range envs {
		if i > start && size+len(e)+1 > wire.MaxBatchFrame {
			flush(i)
		}
		size += len(e) + 1
	}
	flush(len(envs))
	return out
}

// indexKey names a subset of a batch's events. Each index takes four
// bytes: with two, index 65536 read as 0 and a connection could be handed
// another subset's frame, events of topics it never subscribed to
// (TestHubBatchPublishKeepsTopicsApartInHugeBatches; a 4 MiB API body holds
// some 160 000 events).
func indexKey(idx []int) string {
	b := make([]byte, 0, len(idx)*4)
	for _, i := range idx {
		b = append(b, byte(i), byte(i>>8), byte(i>>16), byte(i>>24))
	}
	return string(b)
}

// sweep forgets topics nobody subscribes to that saw no publish for idle,
// so the index does not grow with every topic ever published. Their
// per-instance counters restart; buffered topics keep theirs in the store.
func (h *hub) sweep(now time.Time, idle time.Duration) {
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for name, t := range s.topics {
			t.mu.Lock()
			if len(t.subs) == 0 && !t.order.busy() && now.Sub(t.lastPub) > idle {
				t.dead = true
				delete(s.topics, name)
			}
			t.mu.Unlock()
		}
		s.mu.Unlock()
	}
}

// topicCount returns the number of topics with at least one subscriber.
func (h *hub) topicCount() int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, t := range s.topics {
			t.mu.Lock()
			if len(t.subs) > 0 {
				n++
			}
			t.mu.Unlock()
		}
		s.mu.RUnlock()
	}
	return n
}

// TopicStat is one topic of the dashboard's busiest lists.
type TopicStat struct {
	Topic       string `json:"topic"`
	Subscribers int    `json:"subscribers"`
	// Publishes is the events delivered on the topic since the previous
	// sample; PerSecond divides it by the time between the samples.
	Publishes uint64  `json:"publishes"`
	PerSecond float64 `json:"per_second"`
	// Head is the topic's last seq: its replay store's, if it has one,
	// else this instance's counter. Presence is its presence count, or
	// -1 without presence; both are filled outside the hub's locks.
	Head     uint64 `json:"head"`
	Presence int    `json:"presence"`
}

// topStats walks the index once, taking each topic's lock briefly, and
// returns the n topics with the most subscribers, the n with the most
// publishes since the previous call, and the number of topics with a
// subscriber. It is the dashboard sampler's (one caller at a time: it
// resets each topic's sample); its cost is O(topics), none per connection.
func (h *hub) topStats(n int, elapsed time.Duration) (bySubs, byPubs []TopicStat, subscribed int) {
	secs := elapsed.Seconds()
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, t := range s.topics {
			t.mu.Lock()
			st := TopicStat{Topic: t.name, Subscribers: len(t.subs), Publishes: t.pubs - t.sampled, Head: t.seq, Presence: -1}
			t.sampled = t.pubs
			t.mu.Unlock()
			if st.Subscribers > 0 {
				subscribed++
			}
			if secs > 0 {
				st.PerSecond = float64(st.Publishes) / secs
			}
			if st.Subscribers > 0 {
				bySubs = keepTop(bySubs, st, n, func(a, b TopicStat) bool { return a.Subscribers > b.Subscribers })
			}
			if st.Publishes > 0 {
				byPubs = keepTop(byPubs, st, n, func(a, b TopicStat) bool { return a.Publishes > b.Publishes })
			}
		}
		s.mu.RUnlock()
	}
	return bySubs, byPubs, subscribed
}

// keepTop inserts st into top, kept sorted by more (ties by name) and at
// most n long. Once top is full a topic must beat the last one outright:
// comparing the names of ties with it was a fifth of a sample of 100 000
// one-subscriber topics (BenchmarkDashboardSample_100000Topics).
func keepTop(top []TopicStat, st TopicStat, n int, more func(a, b TopicStat) bool) []TopicStat {
	if len(top) >= n && !more(st, top[len(top)-1]) {
		return top
	}
	before := func(a, b TopicStat) bool { return more(a, b) || (!more(b, a) && a.Topic < b.Topic) }
	i := len(top)
	for i > 0 && before(st, top[i-1]) {
		i--
	}
	if i >= n {
		return top
	}
	top = slices.Insert(top, i, st)
	if len(top) > n {
		top = top[:n]
	}
	return top
}

// enqueueAbove enqueues, one by one, the envelopes (all, or those at idx)
// that c admits (hold.go). It is the rare path of a connection that is
// resuming or replaying a topic.
func (c *conn) enqueueAbove(msgs []bus.Message, envs [][]byte, idx []int, now time.Time) int {
	n := 0
	send := func(i int) {
		if c.admit(msgs[i].Topic, msgs[i].Seq, envs[i]) && c.enqueue(envs[i], now) {
			n++
		}
	}
	if idx == nil {
		for i := range envs {
			send(i)
		}
		return n
	}
	for _, i := range idx {
		send(i)
	}
	return n
}
