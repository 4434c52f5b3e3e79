package handlers

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Canonical subscribe denial reasons (PROTOCOL.md §3.5).
const (
	ReasonForbidden     = "FORBIDDEN"
	ReasonInvalidTopic  = "INVALID_TOPIC"
	ReasonRateLimited   = "RATE_LIMITED"
	ReasonInternalError = "INTERNAL_ERROR"
)

// MaxLastSeen bounds the resume entries considered (§8).
const MaxLastSeen = 1024

// handle processes one inbound frame on the read loop.
func (c *conn) handle(typ websocket.MessageType, msg []byte, now time.Time) {
	if !c.allowFrame(now) {
		return
	}
	if typ == websocket.MessageBinary {
		c.g.m.frameIn("app", len(msg))
		c.appMessage(msg, true)
		return
	}
	f := &c.frame
	if !wire.Parse(msg, f) || f.Kind == wire.KindCursor || f.Kind == wire.KindCursorSnapshot {
		// cursor frames are control frames only on cursor topics (§3.2 rule
		// 4); none are configured without the cursor extension.
		c.g.m.frameIn("app", len(msg))
		c.appMessage(msg, false)
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
		// Without replay buffers no resume entry qualifies (§5.3 step 1):
		// the frame is acknowledged and nothing is recorded.
		c.send(wire.ResumedFrame)
	case wire.KindReplay:
		c.replay(f)
	case wire.KindReply:
		c.settle(f)
	}
}

type subEntry struct {
	raw   []byte // the JSON token as sent, echoed in acks
	topic string
	str   bool // the token is a JSON string
	ack   string
}

// subscribe implements §3.5 for subscribe and subscribe-batch: invalid and
// system entries are denied at once; the rest are authorized in one
// application call and acked in input order, all with ref.
func (c *conn) subscribe(entries []subEntry, ref []byte) {
	s := c.g.settings()
	var ask []string
	for i := range entries {
		e := &entries[i]
		switch {
		case !e.str || !wire.ValidTopic(e.topic, s.AllowNonASCIITopics):
			e.ack = ReasonInvalidTopic
		case wire.IsSystem(e.topic):
			e.ack = c.systemSubscribe(e.topic)
		case !s.isPublic(e.topic) && s.SubscribeHook != nil:
			ask = append(ask, e.topic)
		}
		if e.ack != "" && e.ack != "ok" && ref != nil {
			// Copy: the ack outlives the read buffer the tokens alias.
			c.send(wire.SubscribeDenied(e.raw, ref, e.ack))
		}
	}
	var decisions map[string]string
	if len(ask) > 0 {
		decisions = c.g.authorize(c, ask)
	}
	for i := range entries {
		e := &entries[i]
		if e.ack != "" {
			if e.ack == "ok" && ref != nil {
				c.send(wire.Subscribed(e.raw, ref))
			}
			continue
		}
		reason := decisions[e.topic] // "" when allowed or public
		if reason == "" {
			if _, held := c.topics[e.topic]; !held && len(c.topics) >= s.MaxSubscriptions {
				reason = ReasonRateLimited
			}
		}
		if reason != "" {
			if ref != nil {
				c.send(wire.SubscribeDenied(e.raw, ref, reason))
			}
			continue
		}
		c.attach(e.topic)
		if ref != nil {
			c.send(wire.Subscribed(e.raw, ref))
		}
	}
}

// systemSubscribe decides a wire subscribe to a "__" topic (§4.3). It
// returns "ok" for an accepted no-op and a denial reason otherwise. The
// presence, cursor and group observers arrive with their extensions; until
// then only legacy __replay:<t> is accepted.
func (c *conn) systemSubscribe(t string) string {
	if len(t) > len(wire.ReplayPrefix) && t[:len(wire.ReplayPrefix)] == wire.ReplayPrefix && !c.current.Load() {
		inner := t[len(wire.ReplayPrefix):]
		s := c.g.settings()
		if !wire.ValidTopic(inner, s.AllowNonASCIITopics) || wire.IsSystem(inner) {
			return ReasonInvalidTopic
		}
		if s.isPublic(inner) || s.SubscribeHook == nil {
			return "ok"
		}
		if r := c.g.authorize(c, []string{inner})[inner]; r != "" {
			return r
		}
		return "ok"
	}
	return ReasonInvalidTopic
}

// attach subscribes the connection to t (idempotent).
func (c *conn) attach(t string) {
	if _, held := c.topics[t]; held {
		return
	}
	if c.topics == nil {
		c.topics = make(map[string]struct{})
	}
	c.topics[t] = struct{}{}
	c.nsubs.Store(int32(len(c.topics)))
	c.g.hub.subscribe(t, c, nil)
	c.g.m.subscriptions.Inc()
}

func (c *conn) unsubscribe(t string) {
	if _, held := c.topics[t]; !held {
		return
	}
	delete(c.topics, t)
	c.nsubs.Store(int32(len(c.topics)))
	c.g.hub.unsubscribe(t, c)
	c.g.m.subscriptions.Dec()
}

// replay answers a replay request (§5.4). Without a replay buffer every
// valid request ends at once.
func (c *conn) replay(f *wire.Frame) {
	s := c.g.settings()
	end := func(extra string) {
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
		if wire.ValidTopic(f.Topic, true) {
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
	if _, ok := wire.NonNegInt(f.Since); !ok {
		end("")
		return
	}
	if !wire.ValidTopic(f.Topic, s.AllowNonASCIITopics) || wire.IsSystem(f.Topic) {
		end(`,"denied":true`)
		return
	}
	if !s.isPublic(f.Topic) && s.SubscribeHook != nil {
		if r := c.g.authorize(c, []string{f.Topic})[f.Topic]; r != "" {
			end(`,"denied":true`)
			return
		}
	}
	end("")
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
