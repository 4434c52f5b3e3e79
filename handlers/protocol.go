package handlers

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Canonical subscribe denial reasons (docs/protocol.md §3.5).
const (
	ReasonForbidden     = "FORBIDDEN"
	ReasonInvalidTopic  = "INVALID_TOPIC"
	ReasonRateLimited   = "RATE_LIMITED"
	ReasonInternalError = "INTERNAL_ERROR"
)

// MaxLastSeen bounds the resume entries considered (§8).
const MaxLastSeen = 1024

// framePool holds parsed frames between uses: a frame kept per connection
// would hold its last parse's slices for the connection's whole life.
var framePool = sync.Pool{New: func() any { return new(wire.Frame) }}

// handle processes one inbound frame on the read loop.
func (c *conn) handle(typ websocket.MessageType, msg []byte, now time.Time) {
	if !c.allowFrame(now) {
		return
	}
	if typ == websocket.MessageBinary {
		c.g.m.frameIn("app", len(msg))
		if c.rateAllow(1) {
			c.appMessage(msg, true)
		}
		return
	}
	f := framePool.Get().(*wire.Frame)
	defer framePool.Put(f)
	isCursor := func() bool {
		return wire.ValidTopic(f.Topic, c.g.settings().AllowNonASCIITopics) && c.g.cursorFor(f.Topic) != nil
	}
	if !wire.Parse(msg, f) || ((f.Kind == wire.KindCursor || f.Kind == wire.KindCursorSnapshot) && !isCursor()) {
		// cursor frames are control frames only on cursor topics (§3.2 rule 4).
		c.g.m.frameIn("app", len(msg))
		if c.rateAllow(1) {
			c.appMessage(msg, false)
		}
		return
	}
	c.g.m.frameIn(f.Kind.String(), len(msg))
	switch f.Kind {
	case wire.KindHello:
		batch := false
		for _, cp := range f.Caps {
			if cp == "batch" {
				batch = true
			}
		}
		c.batchCap.Store(batch)
		c.current.Store(true)
	case wire.KindSubscribe:
		c.subscribe([]subEntry{{raw: f.TopicRaw, topic: f.Topic, str: true}}, f.Ref)
	case wire.KindSubscribeBatch:
		entries := make([]subEntry, len(f.Topics))
		for i, raw := range f.Topics {
			t, ok := wire.StringToken(raw)
			entries[i] = subEntry{raw: raw, topic: t, str: ok}
		}
		c.subscribe(entries, f.Ref)
	case wire.KindUnsubscribe:
		c.unsubscribe(f.Topic)
	case wire.KindResume:
		c.resume(f, now)
	case wire.KindReplay:
		c.replay(f)
	case wire.KindReply:
		c.settle(f)
	case wire.KindCursorSnapshot:
		// An unauthorized snapshot is dropped and counted (§6.2); it may
		// come before hello (§9.6).
		if c.authorized(f.Topic) == "" {
			c.g.cursorAttach(c, f.Topic, true)
		} else {
			c.g.m.dropCursor.Inc()
		}
	case wire.KindCursor:
		if c.rateAllow(1) {
			c.g.cursorMove(c, f.Topic, f.Data, now)
		}
	}
}

// authorized returns "" when authorize(c,t) succeeds, else the denial
// reason (§3.5). t must be a valid non-system topic.
func (c *conn) authorized(t string) string {
	s := c.g.settings()
	if !c.needsDecision(s, t) {
		return ""
	}
	return c.g.authorize(c, []string{t})[t]
}

type subEntry struct {
	raw   []byte // the JSON token as sent, echoed in acks
	topic string
	str   bool // the token is a JSON string
	ack   string
}

// subscribe implements §3.5 for subscribe and subscribe-batch: invalid and
// system entries are decided first; the rest are authorized in one
// application call and acked in input order, all with ref.
func (c *conn) subscribe(entries []subEntry, ref []byte) {
	if decisions, ok := c.decide(entries, ref); ok {
		c.apply(entries, decisions, ref)
	}
}

// decide runs the steps of §3.5 that come before any entry is attached:
// the subscribe rate, invalid and system entries (their e.ack is set and
// a denial is acked at once) and the one subscribe hook call, whose
// decisions it returns (topic → reason; absent: allowed). It reports
// false when the rate limit refused the whole frame.
func (c *conn) decide(entries []subEntry, ref []byte) (map[string]string, bool) {
	s := c.g.settings()
	if r := c.g.ext.rate; r != nil && r.cfg.Subscribes && !c.rateAllow(len(entries)) {
		if ref != nil {
			for i := range entries {
				c.send(wire.SubscribeDenied(entries[i].raw, ref, ReasonRateLimited))
			}
		}
		return nil, false
	}
	var ask []string
	for i := range entries {
		e := &entries[i]
		switch {
		case !e.str || !wire.ValidTopic(e.topic, s.AllowNonASCIITopics):
			e.ack = ReasonInvalidTopic
		case wire.IsSystem(e.topic):
			e.ack = c.systemSubscribe(e.topic)
		case c.needsDecision(s, e.topic):
			ask = append(ask, e.topic)
		}
		if e.ack != "" && e.ack != "ok" && ref != nil {
			c.send(wire.SubscribeDenied(e.raw, ref, e.ack))
		}
	}
	var decisions map[string]string
	if len(ask) > 0 {
		decisions = c.g.authorize(c, ask)
	}
	return decisions, true
}

// apply acks and attaches, in input order, the entries decide left
// undecided, denying those the hook refused, those beyond
// max_subscriptions and those that would join a full group; each gets
// its outcome in e.ack ("ok" once attached).
func (c *conn) apply(entries []subEntry, decisions map[string]string, ref []byte) {
	s := c.g.settings()
	now := c.g.now()
	for i := range entries {
		e := &entries[i]
		if e.ack != "" {
			if e.ack == "ok" && ref != nil {
				c.send(wire.Subscribed(e.raw, ref))
			}
			continue
		}
		reason := decisions[e.topic] // "" when allowed or public
		_, held := c.topics[e.topic]
		if reason == "" && !held && len(c.topics) >= s.MaxSubscriptions {
			reason = ReasonRateLimited
		}
		if reason == "" && !held {
			reason = c.g.groupJoinOn(c, e.topic)
		}
		if reason != "" {
			e.ack = reason
			if ref != nil {
				c.send(wire.SubscribeDenied(e.raw, ref, reason))
			}
			continue
		}
		e.ack = "ok"
		c.attach(e.topic, now)
		if ref != nil {
			c.send(wire.Subscribed(e.raw, ref))
		}
	}
}

// systemSubscribe decides and applies a wire subscribe to a "__" topic
// (§4.3): "ok" for an accepted one, else the denial reason.
func (c *conn) systemSubscribe(t string) string {
	s := c.g.settings()
	prefix, inner := splitSystem(t)
	if prefix == "" || !wire.ValidTopic(inner, s.AllowNonASCIITopics) || wire.IsSystem(inner) {
		return ReasonInvalidTopic
	}
	legacy := !c.current.Load()
	switch prefix {
	case wire.PresencePrefix:
		if c.g.presenceFor(inner) == nil {
			return ReasonInvalidTopic
		}
		if r := c.authorized(inner); r != "" {
			return r
		}
		if !c.observing[inner] {
			if c.observing == nil {
				c.observing = make(map[string]bool)
			}
			c.observing[inner] = true
			c.g.presenceObserve(c, inner, true)
		}
	case wire.CursorPrefix:
		if c.g.cursorFor(inner) == nil {
			return ReasonInvalidTopic
		}
		if r := c.authorized(inner); r != "" {
			return r
		}
		c.g.cursorAttach(c, inner, false)
	case wire.GroupPrefix:
		gr := c.g.ext.groups[inner]
		if !legacy || gr == nil {
			return ReasonInvalidTopic
		}
		if r := c.authorized(inner); r != "" {
			return r
		}
		if err := c.g.groupJoin(gr, c, gr.roleOf(c)); err != nil {
			return ReasonForbidden
		}
	case wire.ReplayPrefix:
		if !legacy {
			return ReasonInvalidTopic
		}
		if r := c.authorized(inner); r != "" {
			return r
		}
		// accepted without effect: replay frames are sent directly
	}
	return "ok"
}

// splitSystem splits a system topic into its feature prefix and suffix;
// prefix is "" for other system topics.
func splitSystem(t string) (prefix, inner string) {
	for _, p := range [...]string{wire.PresencePrefix, wire.CursorPrefix, wire.GroupPrefix, wire.ReplayPrefix} {
		if len(t) > len(p) && t[:len(p)] == p {
			return p, t[len(p):]
		}
	}
	return "", ""
}

// attach subscribes the connection to t (idempotent), filling the gap of a
// pending resume first (§5.3), then runs the join effects.
func (c *conn) attach(t string, now time.Time) {
	if _, held := c.topics[t]; held {
		return
	}
	if c.topics == nil {
		c.topics = make(map[string]struct{})
	}
	c.topics[t] = struct{}{}
	c.nsubs.Store(int32(len(c.topics)))
	c.g.routeHold(t, true)
	if p, ok := c.takeResume(t, now); ok {
		c.g.hub.subscribe(t, c, func() { c.hold(t) })
		c.fillResume(t, p)
	} else {
		c.g.baseline(t)
		c.g.hub.subscribe(t, c, nil)
	}
	c.g.m.subscriptions.Inc()
	c.g.presenceJoin(c, t)
}

// unsubscribe removes a subscription and runs its leave effects; unknown
// or invalid topics are a no-op (§3.5); system topics undo their effect.
func (c *conn) unsubscribe(t string) {
	if wire.IsSystem(t) {
		prefix, inner := splitSystem(t)
		switch prefix {
		case wire.PresencePrefix:
			if c.observing[inner] {
				delete(c.observing, inner)
				c.g.presenceObserve(c, inner, false)
			}
		case wire.CursorPrefix:
			c.g.cursorDetach(c, inner)
		case wire.GroupPrefix:
			if gr := c.g.ext.groups[inner]; gr != nil {
				c.g.groupLeave(gr, c)
			}
		}
		return
	}
	if _, held := c.topics[t]; !held {
		return
	}
	delete(c.topics, t)
	c.nsubs.Store(int32(len(c.topics)))
	c.g.hub.unsubscribe(t, c)
	c.g.routeRelease(t)
	c.g.m.subscriptions.Dec()
	c.g.presenceLeave(c, t)
	c.g.groupLeaveOn(c, t)
}

// replayEnd sends the one end frame of a replay request (§5.4); extra is
// "" or a `,"key":value` suffix.
func (c *conn) replayEnd(f *wire.Frame, extra string) {
	s := c.g.settings()
	var data []byte
	switch {
	case f.ReqID != nil:
		data = append(append([]byte(`{"reqId":`), f.ReqID...), extra...)
		data = append(data, '}')
	case extra != "":
		data = append(append([]byte{'{'}, extra[1:]...), '}')
	default:
		data = []byte("null")
	}
	topic := wire.ReplayPrefix + f.Topic
	if wire.ValidTopic(f.Topic, true) || (s.AllowNonASCIITopics && wire.ValidTopic(f.Topic, true)) {
		c.send(wire.AppendEnvelope(nil, topic, "end", data, 0))
		return
	}
	// A topic that needs escaping still gets its end frame, so the
	// client's replay store does not wait forever.
	b, _ := json.Marshal(struct {
		Topic string          `json:"topic"`
		Event string          `json:"event"`
		Data  json.RawMessage `json:"data"`
	}{topic, "end", data})
	c.send(b)
}

// request sends a server request and waits for the client's reply (§3.4).
func (c *conn) request(ctx context.Context, event string, data []byte) (reply, error) {
	if !c.current.Load() {
		return reply{}, errLegacyConnection
	}
	ch := make(chan reply, 1)
	c.reqMu.Lock()
	if c.pending == nil {
		c.pending = make(map[uint64]chan reply)
	}
	c.nextRef++
	ref := c.nextRef
	c.pending[ref] = ch
	c.reqMu.Unlock()
	defer func() {
		c.reqMu.Lock()
		delete(c.pending, ref)
		c.reqMu.Unlock()
	}()
	if !c.send(wire.Request(ref, event, data)) {
		return reply{}, errConnectionClosed
	}
	select {
	case r := <-ch:
		if r.closed {
			return reply{}, errConnectionClosed
		}
		return r, nil
	case <-ctx.Done():
		return reply{}, errRequestTimeout
	}
}

// settle delivers a client's reply to the pending request with its ref;
// unknown refs are dropped (§3.3).
func (c *conn) settle(f *wire.Frame) {
	ref, err := strconv.ParseUint(string(trimQuotes(f.Ref)), 10, 64)
	if err != nil {
		return
	}
	c.reqMu.Lock()
	ch := c.pending[ref]
	delete(c.pending, ref)
	c.reqMu.Unlock()
	if ch == nil {
		return
	}
	r := reply{data: append([]byte(nil), f.Data...)}
	if f.Error != nil {
		if s, ok := wire.StringToken(f.Error); ok {
			r.err = s
		} else {
			r.err = string(f.Error)
		}
		if r.err == "" {
			r.err = "error"
		}
	}
	ch <- r
}

func trimQuotes(b []byte) []byte {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		return b[1 : len(b)-1]
	}
	return b
}
