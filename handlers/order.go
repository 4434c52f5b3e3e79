package handlers

import (
	"context"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Live gap fill (docs/protocol.md §5.1 rule 7). On a topic whose seqs come from
// a shared store (Redis, Postgres), events reach this instance from the bus
// or from appends that finished in any order, and a unit can be lost: on
// the bus while Redis restarts, before a subscription is restored, in a full
// relay queue. The hub therefore delivers such a topic's events strictly in
// seq order. An event whose seq skips is kept aside and one fill per topic
// reads the missing range from the store, outside every lock, then delivers
// it and what waited, in order; what the store no longer holds is reported
// to the subscribers with the truncated notice. After every resubscription
// of the bus the gateway compares each such topic it delivers with the
// store's head the same way, so an idle topic that missed its last event
// catches up too.

// order is an ordered topic's delivery state, guarded by the topic lock.
type order struct {
	on        bool   // the topic's seqs come from a shared store
	known     bool   // delivered is meaningful
	delivered uint64 // the last seq delivered to this instance's subscribers
	pending   []bus.Message
	filling   bool // a fill goroutine owns the topic's gap
	check     bool // compare with the store's head even without a gap (resync)
}

// busy reports whether a fill is running or events wait: the topic must
// stay in the index.
func (o *order) busy() bool { return o.filling || len(o.pending) > 0 }

// maxPending bounds the events a topic keeps aside while a fill runs; more
// are dropped and the fill reads them from the store too.
const maxPending = 4096

// fillConcurrency bounds the fills reading stores at once, so a resync of
// thousands of topics does not open thousands of store calls.
const fillConcurrency = 32

// fillPatience is how long live events of a topic wait for an unreachable
// store before they are delivered after a truncated notice.
const fillPatience = 5 * time.Second

// orderedRule returns the replay rule of topic if its seqs come from a
// shared store, else nil. Memory stores stamp under the topic lock and
// deliver in order by construction.
func (g *Gateway) orderedRule(topic string) *replayRule {
	r := g.replayFor(topic)
	if r == nil || r.local {
		return nil
	}
	return r
}

// deliverOrdered delivers m, stamped by r's shared store, to this
// instance's subscribers in seq order. It never waits on the store.
func (g *Gateway) deliverOrdered(r *replayRule, m *bus.Message, now time.Time) {
	if o, ok := r.store.(replay.Observer); ok {
		o.Observe(m.Topic, m.Seq)
	}
	t := g.hub.lockLive(m.Topic)
	o := &t.order
	start := false
	switch {
	case !o.filling && (!o.known || m.Seq == o.delivered+1 || (len(t.subs) == 0 && m.Seq > o.delivered)):
		t.deliverLocked(m, now)
		o.delivered, o.known = m.Seq, true
	case m.Seq <= o.delivered:
		g.m.dropDuplicate.Inc() // a fill sent it from the store already
	default:
		if len(o.pending) < maxPending {
			o.addPending(*m)
		}
		if !o.filling {
			o.filling, start = true, true
		}
	}
	t.mu.Unlock()
	if start {
		g.startFill(m.Topic, "gap")
	}
}

// addPending inserts m in seq order, once.
func (o *order) addPending(m bus.Message) {
	i, found := slices.BinarySearchFunc(o.pending, m.Seq, func(p bus.Message, seq uint64) int {
		switch {
		case p.Seq < seq:
			return -1
		case p.Seq > seq:
			return 1
		}
		return 0
	})
	if !found {
		o.pending = slices.Insert(o.pending, i, m)
	}
}

// startFill runs one fill of topic; the caller set order.filling.
func (g *Gateway) startFill(topic, cause string) {
	metricFills.WithLabelValues(g.m.name, cause).Inc()
	g.wg.Add(1)
	go g.fill(topic)
}

// fill closes topic's gap: it reads the store from the last delivered seq,
// outside every lock, and delivers what it read and what waited, in order,
// until no gap is left. A store error is retried with backoff for
// fillPatience; then the waiting events are delivered after a truncated
// notice rather than held back longer.
func (g *Gateway) fill(topic string) {
	defer g.wg.Done()
	done := false
	defer func() {
		if p := recover(); p != nil {
			g.logPanic("live fill", p)
		}
		if !done { // a panic or a closing gateway: let a later unit start again
			t := g.hub.lockLive(topic)
			t.order.filling = false
			t.mu.Unlock()
		}
	}()
	r := g.orderedRule(topic)
	select {
	case g.fillSem <- struct{}{}:
		defer func() { <-g.fillSem }()
	case <-g.ctx.Done():
		return
	}
	backoff, giveUp := 50*time.Millisecond, time.Now().Add(fillPatience)
	for {
		t := g.hub.lockLive(topic)
		o := &t.order
		if !o.check && (len(o.pending) == 0 || o.pending[0].Seq == o.delivered+1) {
			// Nothing to read: deliver what is contiguous and stop.
			g.applyFill(t, r, nil, false)
			o.filling, done = false, true
			t.mu.Unlock()
			return
		}
		from, checking := o.delivered, o.check
		o.check = false
		t.mu.Unlock()

		ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
		rng, err := r.store.Since(ctx, topic, from)
		cancel()
		if g.ctx.Err() != nil {
			return
		}
		t = g.hub.lockLive(topic)
		switch {
		case err == nil:
			g.applyFill(t, r, &rng, false)
			backoff, giveUp = 50*time.Millisecond, time.Now().Add(fillPatience)
		case time.Now().Before(giveUp):
			t.order.check = t.order.check || checking
		default:
			g.logger.Warn("live fill: the replay store is unreachable; subscribers are told truncated and get the events that waited",
				zap.String("topic", topic), zap.Error(err))
			g.skipGap(t, r)
		}
		t.mu.Unlock()
		if err != nil {
			select {
			case <-time.After(backoff):
			case <-g.ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// applyFill delivers, with t locked, the stored entries of rng (nil: no
// read) above the last delivered seq, then the waiting events that follow
// on. After a read, or with skip, a gap left before a waiting event is
// lost: the store holds every event the bus carried before a later one, so
// nothing else will come to fill it. A lost seq (evicted, or gone with the
// store's data) is reported with one truncated notice, in place.
func (g *Gateway) applyFill(t *topic, r *replayRule, rng *replay.Range, skip bool) {
	o := &t.order
	var out []bus.Message
	noticeAt := -1
	next := o.delivered + 1
	take := func(m bus.Message) {
		if m.Seq < next {
			return
		}
		if m.Seq > next && o.known && noticeAt < 0 {
			noticeAt = len(out)
		}
		out = append(out, m)
		next = m.Seq + 1
		o.delivered, o.known = m.Seq, true
	}
	if rng != nil {
		if !o.known {
			// Nobody here has a position on the topic yet: start at the head.
			o.delivered, o.known, next = rng.Head, true, rng.Head+1
		}
		for _, e := range rng.Entries {
			take(bus.Message{Topic: t.name, Event: e.Event, Data: e.Data, Seq: e.Seq})
		}
		if len(rng.Entries) == 0 && rng.Head >= next && len(o.pending) == 0 {
			// The head is ahead of every entry the store holds: those
			// events are gone.
			noticeAt = 0
			o.delivered, next = rng.Head, rng.Head+1
		}
	}
	rest := o.pending[:0]
	for _, m := range o.pending {
		switch {
		case m.Seq < next:
		case m.Seq == next || rng != nil || skip:
			take(m)
		default:
			rest = append(rest, m)
		}
	}
	clear(o.pending[len(rest):])
	o.pending = rest
	if noticeAt >= 0 {
		metricTruncated.WithLabelValues(g.m.name, "live").Inc()
		if r.cfg.TruncationNotice {
			out = slices.Insert(out, noticeAt, bus.Message{Topic: t.name, Event: "truncated"})
		}
	}
	if len(out) == 0 {
		return
	}
	g.m.filled.Add(float64(len(out)))
	g.deliverLockedAll(t, out)
}

// skipGap gives up on t's gap: the subscribers are told truncated, then
// get the events that waited. t is locked.
func (g *Gateway) skipGap(t *topic, r *replayRule) { g.applyFill(t, r, nil, true) }

// deliverLockedAll enqueues msgs, in order, to t's subscribers (batch
// frames for connections with the cap); t is locked.
func (g *Gateway) deliverLockedAll(t *topic, msgs []bus.Message) {
	now := g.now()
	envs := make([][]byte, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		envs[i] = wire.AppendEnvelope(make([]byte, 0, wire.EnvelopeSize(m.Topic, m.Event, m.Data, m.Seq)), m.Topic, m.Event, m.Data, m.Seq)
	}
	t.lastPub = now
	t.pubs += uint64(len(msgs))
	_, _ = g.hub.deliverBatch(msgs, envs, []string{t.name}, map[string]*topic{t.name: t}, now)
}

// resync asks for a comparison of every ordered topic this instance
// delivers with its store: the bus may have missed units. It is the bus's
// callback and only signals.
func (g *Gateway) resync() {
	select {
	case g.resyncSig <- struct{}{}:
	default:
	}
}

// resyncLoop runs the comparisons resync asks for, until Close.
func (g *Gateway) resyncLoop() {
	defer g.wg.Done()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-g.resyncSig:
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					g.logPanic("resync", p)
				}
			}()
			for _, name := range g.hub.orderedWithSubscribers() {
				t := g.hub.lockLive(name)
				start := !t.order.filling && len(t.subs) > 0
				t.order.check = true
				t.order.filling = t.order.filling || start
				t.mu.Unlock()
				if start {
					g.startFill(name, "resync")
				}
			}
		}()
	}
}

// orderedWithSubscribers lists the ordered topics with local subscribers.
func (h *hub) orderedWithSubscribers() []string {
	var out []string
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for name, t := range s.topics {
			t.mu.Lock()
			if t.order.on && len(t.subs) > 0 {
				out = append(out, name)
			}
			t.mu.Unlock()
		}
		s.mu.RUnlock()
	}
	return out
}

// baseline gives an ordered topic about to get its first local subscriber
// a position: the store's head, read before the subscribe, so that a unit
// lost on the bus afterwards shows as a gap. It costs one store read per
// topic this instance did not deliver yet.
func (g *Gateway) baseline(topic string) {
	r := g.orderedRule(topic)
	if r == nil {
		return
	}
	t := g.hub.lockLive(topic)
	known := t.order.known
	t.mu.Unlock()
	if known {
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	head, err := r.store.Head(ctx, topic)
	cancel()
	if err != nil {
		return // the first unit received sets the position instead
	}
	t = g.hub.lockLive(topic)
	if !t.order.known {
		t.order.delivered, t.order.known = head, true
	}
	t.mu.Unlock()
}
