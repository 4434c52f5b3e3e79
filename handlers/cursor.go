package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/cursor"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

type cursorRule struct {
	pattern wire.Pattern
	cfg     CursorConfig
	tracker cursor.Tracker
}

func newCursorRules(cfgs []CursorConfig, b Backends, now func() time.Time, onExpire cursor.ExpireFunc) ([]*cursorRule, error) {
	rules := make([]*cursorRule, 0, len(cfgs))
	for _, c := range cfgs {
		tr, err := b.cursor(cursor.Config{TopicThrottle: c.TopicThrottle, TTL: c.TTL, Now: now, OnExpire: onExpire})
		if err != nil {
			return rules, fmt.Errorf("cursor %q: %w", c.Topics, err)
		}
		rules = append(rules, &cursorRule{pattern: wire.Pattern(c.Topics), cfg: c, tracker: tr})
	}
	return rules, nil
}

func (g *Gateway) cursorFor(t string) *cursorRule {
	for _, r := range g.ext.cursors {
		if r.pattern.Match(t) {
			return r
		}
	}
	return nil
}

// cursorTopics holds, per cursor topic, the attached connections, each
// mover's throttle, and the entries changed since the last flush.
type cursorTopics struct {
	g *Gateway
	topicIndex[*curTopic]
}

type curTopic struct {
	name  string
	frame string // __cursor:<t>
	rule  *cursorRule

	topicState
	attached map[*conn]struct{}
	movers   map[*conn]*mover
	dirty    map[string]cursor.Entry
	order    []string
	flushTh  cursor.Throttle
	timer    *time.Timer
	stopped  bool

	held     map[*conn][][]byte // frames for connections still waiting for their snapshot
	outbox   []cursorWrite      // the tracker writes and relays of sent frames, in order
	inflight *cursorWrite       // the write the writer runs now
	writing  bool               // a writer goroutine drains outbox
}

// cursorWrite is what follows a frame sent to the local connections: the
// tracker write (entries to store, or a key to remove) and the relay of
// the frame to the other instances. Writes of a topic run in order on one
// goroutine, never under the topic's lock.
type cursorWrite struct {
	entries []cursor.Entry
	remove  string
	event   string
	frame   []byte
}

// mover is one connection's cursor on one topic.
type mover struct {
	th     cursor.Throttle
	latest json.RawMessage
	user   json.RawMessage
	timer  *time.Timer
}

// lock returns t's state locked and live, creating it if needed.
func (ct *cursorTopics) lock(t string, r *cursorRule) *curTopic {
	return ct.topicIndex.lock(t, func() *curTopic {
		ct.g.routeHold(wire.CursorPrefix+t, false) // released when dropped
		return &curTopic{name: t, frame: wire.CursorPrefix + t, rule: r,
			attached: make(map[*conn]struct{}), movers: make(map[*conn]*mover),
			dirty: make(map[string]cursor.Entry), flushTh: cursor.Throttle{Interval: r.cfg.TopicThrottle}}
	})
}

// release forgets x when nobody is attached, moving or pending. Called
// with x.mu held.
func (ct *cursorTopics) release(x *curTopic) {
	if len(x.attached) > 0 || len(x.movers) > 0 || len(x.dirty) > 0 || x.writing {
		return
	}
	ct.drop(x.name, x)
	ct.g.routeRelease(x.frame)
}

func appendEntry(dst []byte, e cursor.Entry) []byte {
	dst = wire.AppendString(append(dst, `{"key":`...), e.Key)
	dst = append(dst, `,"user":`...)
	if len(e.User) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, e.User...)
	}
	dst = append(dst, `,"data":`...)
	if len(e.Data) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, e.Data...)
	}
	return append(dst, '}')
}

func appendEntries(dst []byte, es []cursor.Entry) []byte {
	dst = append(dst, '[')
	for i, e := range es {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendEntry(dst, e)
	}
	return append(dst, ']')
}

// cursorAttach attaches c to t: by cursor-snapshot (snapshot reply) or by a
// legacy __cursor:<t> subscribe (current entries as one bulk, if any). The
// tracker is read without the topic's lock: c's frames are held meanwhile
// and follow the snapshot.
func (g *Gateway) cursorAttach(c *conn, t string, snapshot bool) {
	r := g.cursorFor(t)
	x := g.cursors.lock(t, r)
	x.attached[c] = struct{}{}
	if c.cursorsAttached == nil {
		c.cursorsAttached = make(map[string]bool)
	}
	c.cursorsAttached[t] = true
	if x.held == nil {
		x.held = make(map[*conn][][]byte)
	}
	if _, ok := x.held[c]; !ok {
		x.held[c] = nil
	}
	x.mu.Unlock()

	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	entries, err := r.tracker.List(ctx, t)
	cancel()

	x = g.cursors.lock(t, r)
	defer x.mu.Unlock()
	held := x.held[c]
	delete(x.held, c)
	if err == nil {
		entries = x.overlay(entries)
	}
	switch {
	case err != nil:
		g.logger.Warn("cursor list failed", zap.String("topic", t), zap.Error(err))
	case snapshot:
		c.send(wire.AppendEnvelope(nil, x.frame, "snapshot", appendEntries(nil, entries), 0))
	case len(entries) > 0:
		c.send(wire.AppendEnvelope(nil, x.frame, "bulk", appendEntries(nil, entries), 0))
	}
	for _, f := range held {
		c.send(f)
	}
}

// deliver sends f to every attached connection, holding it for those that
// wait for their snapshot. Called with x.mu held.
func (x *curTopic) deliver(f []byte) {
	for c := range x.attached {
		if q, ok := x.held[c]; ok {
			x.held[c] = append(q, f)
			continue
		}
		c.send(f)
	}
}

// cursorWriteLater queues w for the topic's writer, starting it if needed. Called
// with x.mu held.
func (g *Gateway) cursorWriteLater(x *curTopic, w cursorWrite) {
	x.outbox = append(x.outbox, w)
	if x.writing {
		return
	}
	x.writing = true
	g.wg.Add(1)
	go g.cursorWriter(x)
}

// cursorWriter runs the topic's queued writes in order until none is left.
func (g *Gateway) cursorWriter(x *curTopic) {
	defer g.wg.Done()
	for {
		x.mu.Lock()
		if len(x.outbox) == 0 {
			x.writing = false
			x.outbox = nil
			g.cursors.release(x)
			x.mu.Unlock()
			return
		}
		w := x.outbox[0]
		x.outbox = x.outbox[1:]
		x.inflight = &w
		x.mu.Unlock()
		g.safely("cursor writer", func() { g.cursorWrite(x, w) })
		x.mu.Lock()
		x.inflight = nil
		x.mu.Unlock()
	}
}

// overlay applies the writes not yet stored to entries read from the
// tracker, so a snapshot agrees with the frames already sent: no cursor
// shown after its remove, none older than its last update. Only this
// instance writes the keys of its own connections, so its pending writes
// are their latest state. Called with x.mu held.
func (x *curTopic) overlay(entries []cursor.Entry) []cursor.Entry {
	if x.inflight == nil && len(x.outbox) == 0 {
		return entries
	}
	pending := x.outbox
	if x.inflight != nil {
		pending = append([]cursorWrite{*x.inflight}, pending...)
	}
	at := make(map[string]int, len(entries))
	for i, e := range entries {
		at[e.Key] = i
	}
	gone := make(map[string]bool)
	for _, w := range pending {
		if w.remove != "" {
			gone[w.remove] = true
			continue
		}
		for _, e := range w.entries {
			delete(gone, e.Key)
			if i, ok := at[e.Key]; ok {
				entries[i] = e
			} else {
				at[e.Key] = len(entries)
				entries = append(entries, e)
			}
		}
	}
	if len(gone) == 0 {
		return entries
	}
	kept := entries[:0]
	for _, e := range entries {
		if !gone[e.Key] {
			kept = append(kept, e)
		}
	}
	return kept
}

func (g *Gateway) cursorWrite(x *curTopic, w cursorWrite) {
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	tr := x.rule.tracker
	var err error
	switch {
	case w.remove != "":
		if err = tr.Remove(ctx, x.name, w.remove); err != nil {
			g.logger.Warn("cursor remove failed; the entry expires after the cursor ttl", zap.String("topic", x.name), zap.Error(err))
		}
	case len(w.entries) > 0:
		if many, ok := tr.(cursor.ManyUpdater); ok {
			err = many.UpdateMany(ctx, x.name, w.entries)
		} else {
			for _, e := range w.entries {
				if err = tr.Update(ctx, x.name, e); err != nil {
					break
				}
			}
		}
		if err != nil {
			g.logger.Warn("cursor update failed; the frame still went out", zap.String("topic", x.name), zap.Error(err))
		}
	}
	g.relaySystem(x.frame, w.event, w.frame)
}

// cursorDetach stops delivery to c; its own entry stays until close.
func (g *Gateway) cursorDetach(c *conn, t string) {
	r := g.cursorFor(t)
	if r == nil || !c.cursorsAttached[t] {
		return
	}
	delete(c.cursorsAttached, t)
	x := g.cursors.lock(t, r)
	delete(x.attached, c)
	g.cursors.release(x)
	x.mu.Unlock()
}

// cursorMove handles a cursor frame: attached connections only, data at
// most max_data bytes; the per-connection throttle lets it through at its
// leading or trailing edge, carrying the latest data.
func (g *Gateway) cursorMove(c *conn, t string, data []byte, now time.Time) {
	r := g.cursorFor(t)
	if !c.cursorsAttached[t] || len(data) > r.cfg.MaxData {
		g.m.dropCursor.Inc()
		return
	}
	if len(data) == 0 {
		data = []byte("null")
	}
	x := g.cursors.lock(t, r)
	defer x.mu.Unlock()
	m := x.movers[c]
	if m == nil {
		th := r.cfg.Throttle
		if th < 0 {
			th = 0
		}
		m = &mover{th: cursor.Throttle{Interval: th}, user: project(c.identity, r.cfg.Select)}
		x.movers[c] = m
		c.cursorsMoved = append(c.cursorsMoved, t)
	}
	m.latest = bytes.Clone(data)
	send, fireAt := m.th.Offer(now)
	switch {
	case send:
		g.cursorStore(x, c, m, now)
	case !fireAt.IsZero():
		m.timer = time.AfterFunc(fireAt.Sub(now), func() {
			g.safely("cursor throttle", func() {
				x.mu.Lock()
				defer x.mu.Unlock()
				if x.movers[c] == m && m.th.Fired(g.now()) && !x.stopped {
					g.cursorStore(x, c, m, g.now())
				}
			})
		})
	}
}

// cursorStore marks a mover's latest data changed and schedules the topic
// flush. Called with x.mu held.
func (g *Gateway) cursorStore(x *curTopic, c *conn, m *mover, now time.Time) {
	e := cursor.Entry{Key: c.id, User: m.user, Data: m.latest}
	if _, ok := x.dirty[e.Key]; !ok {
		x.order = append(x.order, e.Key)
	}
	x.dirty[e.Key] = e
	send, fireAt := x.flushTh.Offer(now)
	switch {
	case send:
		g.cursorFlush(x)
	case !fireAt.IsZero():
		x.timer = time.AfterFunc(fireAt.Sub(now), func() {
			g.safely("cursor flush", func() {
				x.mu.Lock()
				defer x.mu.Unlock()
				if x.flushTh.Fired(g.now()) && !x.stopped {
					g.cursorFlush(x)
				}
			})
		})
	}
}

// cursorFlush sends the changed entries: one as update, several as one
// bulk frame (§6.2), to the local connections at once; the tracker write
// (one round trip when the backend is a cursor.ManyUpdater) and the relay
// to the other instances follow on the topic's writer. Called with x.mu
// held.
func (g *Gateway) cursorFlush(x *curTopic) {
	if len(x.dirty) == 0 {
		return
	}
	es := make([]cursor.Entry, 0, len(x.order))
	for _, k := range x.order {
		es = append(es, x.dirty[k])
	}
	clear(x.dirty)
	x.order = x.order[:0]
	event, data := "update", []byte(nil)
	if len(es) == 1 {
		data = appendEntry(nil, es[0])
	} else {
		event, data = "bulk", appendEntries(nil, es)
	}
	frame := wire.AppendEnvelope(nil, x.frame, event, data, 0)
	x.deliver(frame)
	g.cursorWriteLater(x, cursorWrite{entries: es, event: event, frame: frame})
}

// cursorRemove runs at close for every topic c moved on: the entry goes
// and attached connections get remove; no update for the key follows.
func (g *Gateway) cursorRemove(c *conn, t string) {
	r := g.cursorFor(t)
	x := g.cursors.lock(t, r)
	defer x.mu.Unlock()
	m := x.movers[c]
	delete(x.movers, c)
	delete(x.attached, c)
	if m == nil {
		g.cursors.release(x)
		return
	}
	if m.timer != nil {
		m.timer.Stop()
	}
	if _, ok := x.dirty[c.id]; ok {
		delete(x.dirty, c.id)
		for i, k := range x.order {
			if k == c.id {
				x.order = append(x.order[:i], x.order[i+1:]...)
				break
			}
		}
	}
	// A mover whose only move is still held for the flush sends remove as
	// well: harmless for clients that never saw it, and no update follows
	// (the writer runs the topic's writes in order).
	frame := wire.AppendEnvelope(nil, x.frame, "remove", append(wire.AppendString([]byte(`{"key":`), c.id), '}'), 0)
	x.deliver(frame)
	g.cursorWriteLater(x, cursorWrite{remove: c.id, event: "remove", frame: frame})
	g.cursors.release(x)
}

// stop cancels every cursor timer at Close.
func (ct *cursorTopics) stop() {
	for _, x := range ct.all() {
		x.mu.Lock()
		x.stopped = true
		if x.timer != nil {
			x.timer.Stop()
		}
		for _, m := range x.movers {
			if m.timer != nil {
				m.timer.Stop()
			}
		}
		x.mu.Unlock()
	}
}

func (g *Gateway) apiCursors(w http.ResponseWriter, r *http.Request, s *settings) {
	t := r.URL.Query().Get("topic")
	if !s.checkQueryTopic(w, t) {
		return
	}
	rule := g.cursorFor(t)
	if rule == nil {
		writeErr(w, apiErr(http.StatusNotFound, "NO_CURSORS", "topic "+t+" has no cursors"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	entries, err := rule.tracker.List(ctx, t)
	if err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "reading cursors failed"))
		return
	}
	body := append(appendEntries([]byte(`{"cursors":`), entries), '}', '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// cursorExpired is the trackers' OnExpire: entries of a stopped instance
// timed out, and this instance removed them, so it tells everyone.
func (g *Gateway) cursorExpired(t string, keys []string) {
	for _, k := range keys {
		frame := wire.AppendEnvelope(nil, wire.CursorPrefix+t, "remove", append(wire.AppendString([]byte(`{"key":`), k), '}'), 0)
		g.cursorDeliverLocal(t, frame)
		g.relaySystem(wire.CursorPrefix+t, "remove", frame)
	}
}

// cursorDeliverLocal sends a cursor frame to this instance's attached
// connections (frames relayed from other instances, expiries).
func (g *Gateway) cursorDeliverLocal(t string, frame []byte) {
	x, ok := g.cursors.peek(t)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deliver(frame)
}
