package handlers

import "github.com/coder/websocket"

// A connection's stream of one topic is filtered for a while in two cases
// (docs/protocol.md §5.3, §5.4):
//
//   - held: while the connection's read loop reads a replay store for a
//     resume or a replay request, live frames of the topic are kept aside
//     instead of queued, so the store's answer goes first although no hub
//     lock is held across the read;
//   - floored: after a resume gap fill, live frames up to the seq the fill
//     reached are dropped, as the store already sent them; the first frame
//     above the floor lifts it.
//
// Both are rare, so the fan-out checks one atomic flag (filtered) and takes
// the slow path only when it is set.
type topicFilter struct {
	holding   bool
	held      []heldFrame
	heldBytes int64
	overflow  bool // more than max_backpressure was held: the connection is closed as slow
	floor     uint64
}

type heldFrame struct {
	b   []byte
	seq uint64
}

// admit reports whether a live frame of t with seq (0: none) is to be
// queued now; a held frame is kept for release instead.
func (c *conn) admit(t string, seq uint64, frame []byte) bool {
	if !c.filtered.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.filters[t]
	switch {
	case f == nil:
		return true
	case f.holding:
		if f.heldBytes += int64(len(frame)); f.heldBytes > c.g.settings().MaxBackpressure {
			f.overflow = true
			return false
		}
		f.held = append(f.held, heldFrame{frame, seq})
		return false
	case seq == 0:
		return true
	case seq <= f.floor:
		return false
	}
	c.dropFilter(t)
	return true
}

// hold starts keeping t's live frames aside. The caller holds t's topic
// lock, so no frame of t is being delivered meanwhile.
func (c *conn) hold(t string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.filters == nil {
		c.filters = make(map[string]*topicFilter)
	}
	floor := uint64(0)
	if f := c.filters[t]; f != nil {
		floor = f.floor // a resume's floor still applies to what is held
	}
	c.filters[t] = &topicFilter{holding: true, floor: floor}
	c.filtered.Store(true)
}

// release ends the hold of t and queues, in order, the held frames without
// a seq or with a seq above above (those up to it were sent from the
// store). If none was above it, later live frames up to above are dropped
// (the floor). The caller holds t's topic lock, so the frames keep their
// place before every later one.
func (c *conn) release(t string, above uint64) {
	c.mu.Lock()
	f := c.filters[t]
	if f == nil {
		c.mu.Unlock()
		return
	}
	var out [][]byte
	top := uint64(0)
	above = max(above, f.floor)
	for _, h := range f.held {
		if h.seq == 0 || h.seq > above {
			out = append(out, h.b)
			top = max(top, h.seq)
		}
	}
	overflow := f.overflow
	if above > 0 && top <= above && !overflow {
		*f = topicFilter{floor: above}
	} else {
		c.dropFilter(t)
	}
	c.mu.Unlock()
	if overflow {
		c.g.m.dropSlow.Inc()
		c.closeAsync(websocket.StatusTryAgainLater, "Slow consumer")
		return
	}
	for _, b := range out {
		c.enqueue(b, c.g.now())
	}
}

// dropFilter removes t's filter; c.mu is held.
func (c *conn) dropFilter(t string) {
	delete(c.filters, t)
	if len(c.filters) == 0 {
		c.filters = nil
		c.filtered.Store(false)
	}
}
