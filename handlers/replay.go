package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// replayRule is one `replay <pattern>` entry with its store.
type replayRule struct {
	pattern wire.Pattern
	cfg     ReplayConfig
	store   replay.Store
	// local: the store is in this process (memory), stamped under the
	// topic lock; otherwise its seqs come from a shared store and the hub
	// orders and fills their delivery (order.go).
	local bool
}

// memoryBase is where this start's memory replay stores count from
// (replay.Config.Base): 0 on a gateway's first start in stateDir, so a new
// deployment's seqs start at 1, and replay.ClockBase on every later start,
// so a restarted gateway never issues a seq its clients saw from the last
// one (docs/protocol.md §5.2). The marker is one empty file per gateway name.
// Without a stateDir, or when the marker cannot be written, it is the
// clock base: the safe side.
func memoryBase(stateDir, name string, now time.Time) uint64 {
	if stateDir == "" {
		return 0
	}
	marker := filepath.Join(stateDir, "started-"+url.PathEscape(name))
	if _, err := os.Stat(marker); err == nil {
		return replay.ClockBase(now)
	}
	if os.MkdirAll(stateDir, 0o700) != nil || os.WriteFile(marker, nil, 0o600) != nil {
		return replay.ClockBase(now)
	}
	return 0
}

// storeTimeout bounds each replay store call made on a client's behalf.
const storeTimeout = 5 * time.Second

// pendingResumeTTL is how long a resume entry waits for its subscribe (§8).
const pendingResumeTTL = 10 * time.Second

func newReplayRules(cfgs []ReplayConfig, now func() time.Time, memoryBase uint64) ([]*replayRule, error) {
	rules := make([]*replayRule, 0, len(cfgs))
	for _, c := range cfgs {
		rc := replay.Config{Size: c.Size, TTL: c.TTL, Now: now, Base: memoryBase}
		var store replay.Store = replay.NewMemory(rc)
		if c.NewStore != nil {
			var err error
			if store, err = c.NewStore(rc); err != nil {
				return rules, fmt.Errorf("replay %q: %w", c.Topics, err)
			}
		}
		_, local := store.(*replay.Memory)
		rules = append(rules, &replayRule{pattern: wire.Pattern(c.Topics), cfg: c, store: store, local: local})
	}
	return rules, nil
}

// replayFor returns the first replay rule matching topic, or nil.
func (g *Gateway) replayFor(topic string) *replayRule {
	for _, r := range g.ext.replay {
		if r.pattern.Match(topic) {
			return r
		}
	}
	return nil
}

// stamp is the hub's seq source for topics buffered in memory: the store
// appends the event and returns its seq (§5.1 rule 2). Shared stores are
// appended to before the hub is involved (publishViaStores), as their
// round trip must not run under the topic lock.
func (g *Gateway) stamp(m *bus.Message) (bool, error) {
	r := g.replayFor(m.Topic)
	if r == nil || !r.local {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	seq, err := r.store.Append(ctx, m.Topic, m.Event, m.Data)
	if err != nil {
		return true, err
	}
	m.Seq = seq
	return true, nil
}

// head returns a topic's last seq: its store's for buffered topics.
func (g *Gateway) head(ctx context.Context, topic string) (uint64, error) {
	if r := g.replayFor(topic); r != nil {
		return r.store.Head(ctx, topic)
	}
	return g.hub.head(topic), nil
}

// resume records the pending resumes of a well-formed resume frame (§5.3
// step 1) and acknowledges it. Nothing is authorized or sent yet.
func (c *conn) resume(f *wire.Frame, now time.Time) {
	s := c.g.settings()
	// A later resume replaces the pending entries of an earlier one, so
	// they stay bounded by MaxLastSeen however many resumes a client sends.
	c.resumes = nil
	if len(c.g.ext.replay) > 0 {
		wire.EachLastSeen(f.LastSeenSeqs, MaxLastSeen, func(t string, seq uint64) {
			if !wire.ValidTopic(t, s.AllowNonASCIITopics) || wire.IsSystem(t) || c.g.replayFor(t) == nil {
				return
			}
			if _, held := c.topics[t]; held {
				return
			}
			if c.resumes == nil {
				c.resumes = make(map[string]pendingResume)
			}
			c.resumes[t] = pendingResume{after: seq, expires: now.Add(pendingResumeTTL)}
		})
	}
	c.send(wire.ResumedFrame)
}

type pendingResume struct {
	after   uint64
	expires time.Time
	// lost: the client may have missed events before after, which it
	// cannot name (an SSE Last-Event-ID that does not fit the stream's
	// topics), so the gap counts as truncated whatever the store holds.
	lost bool
}

// takeResume consumes the pending resume of t, if one is still valid.
func (c *conn) takeResume(t string, now time.Time) (pendingResume, bool) {
	p, ok := c.resumes[t]
	if !ok {
		return p, false
	}
	delete(c.resumes, t)
	if len(c.resumes) == 0 {
		c.resumes = nil
	}
	return p, now.Before(p.expires)
}

// fillResume sends what c missed on t after `after` (§5.3 step 3), c
// having just been attached with t held (hold.go): it reads the store
// without any hub lock, then, under t's lock, queues the notice and the
// stored entries, and releases the held live frames above them, so only
// seq > head follows live. A store that cannot be read gets the truncated
// notice: the client is told it may have missed events, never nothing.
func (c *conn) fillResume(t string, p pendingResume) {
	after := p.after
	r := c.g.replayFor(t)
	ctx, cancel := context.WithTimeout(c.g.ctx, storeTimeout)
	rng, err := r.store.Since(ctx, t, after)
	cancel()
	if err != nil {
		c.g.logger.Warn("resume: reading the replay store failed; the client is told truncated", zap.String("topic", t), zap.Error(err))
		rng = replay.Range{Head: after, Truncated: true}
	}
	rng.Truncated = rng.Truncated || p.lost
	if rng.Truncated {
		metricTruncated.WithLabelValues(c.g.m.name, "resume").Inc()
	}
	c.g.hub.locked(t, func(tp *topic) {
		if rng.Truncated && r.cfg.TruncationNotice {
			c.send(wire.AppendEnvelope(nil, t, "truncated", nil, 0))
		}
		c.sendEntries(t, rng.Entries)
		c.release(t, max(after, rng.Head))
		if o := &tp.order; o.on && !o.known && err == nil {
			o.delivered, o.known = rng.Head, true
		}
	})
}

// sendEntries queues stored events as ordinary envelopes with their
// original seq, in batch frames when the connection has the cap.
func (c *conn) sendEntries(t string, entries []replay.Entry) {
	if len(entries) == 0 {
		return
	}
	envs := make([][]byte, len(entries))
	for i, e := range entries {
		envs[i] = wire.AppendEnvelope(nil, t, e.Event, e.Data, e.Seq)
	}
	if c.batchCap.Load() {
		envs = splitBatches(envs)
	}
	c.sendReplay(envs)
}

// replay answers a replay request (§5.4): msg frames, then one end, on
// __replay:<t>, never subscribing.
func (c *conn) replay(f *wire.Frame) {
	s := c.g.settings()
	since, sinceOK := wire.NonNegInt(f.Since)
	switch {
	case !sinceOK:
		c.replayEnd(f, "")
		return
	case !wire.ValidTopic(f.Topic, s.AllowNonASCIITopics) || wire.IsSystem(f.Topic):
		c.replayEnd(f, `,"denied":true`)
		return
	}
	if c.needsDecision(s, f.Topic) {
		if r := c.g.authorize(c, []string{f.Topic})[f.Topic]; r != "" {
			c.replayEnd(f, `,"denied":true`)
			return
		}
	}
	r := c.g.replayFor(f.Topic)
	if r == nil {
		c.replayEnd(f, "")
		return
	}
	// Live frames of a subscribed topic wait while the store is read, so
	// none above the last replayed seq precedes the end (§5.4).
	_, subscribed := c.topics[f.Topic]
	if subscribed {
		c.g.hub.locked(f.Topic, func(*topic) { c.hold(f.Topic) })
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, storeTimeout)
	rng, err := r.store.Since(ctx, f.Topic, since)
	cancel()
	answer := func() {
		switch {
		case err != nil:
			c.g.logger.Warn("replay: reading the replay store failed; the request ends truncated", zap.String("topic", f.Topic), zap.Error(err))
			metricTruncated.WithLabelValues(c.g.m.name, "replay").Inc()
			c.replayEnd(f, `,"truncated":true`)
			return
		case since == rng.Head:
			c.replayEnd(f, "")
			return
		}
		c.sendReplay(replayMsgFrames(f, rng.Entries))
		if rng.Truncated {
			metricTruncated.WithLabelValues(c.g.m.name, "replay").Inc()
			c.replayEnd(f, `,"truncated":true`)
		} else {
			c.replayEnd(f, "")
		}
	}
	if !subscribed {
		answer()
		return
	}
	c.g.hub.locked(f.Topic, func(*topic) {
		answer()
		c.release(f.Topic, 0)
	})
}

// replayMsgFrames encodes entries as msg frames on __replay:<t> (§5.4).
func replayMsgFrames(f *wire.Frame, entries []replay.Entry) [][]byte {
	topic := wire.ReplayPrefix + f.Topic
	frames := make([][]byte, 0, len(entries))
	for _, e := range entries {
		data := make([]byte, 0, 48+len(f.ReqID)+len(e.Event)+len(e.Data))
		data = append(data, '{')
		if f.ReqID != nil {
			data = append(append(append(data, `"reqId":`...), f.ReqID...), ',')
		}
		data = append(data, `"seq":`...)
		data = strconv.AppendUint(data, e.Seq, 10)
		data = append(append(append(data, `,"event":"`...), e.Event...), `","data":`...)
		if len(e.Data) == 0 {
			data = append(data, "null"...)
		} else {
			data = append(data, e.Data...)
		}
		data = append(data, '}')
		frames = append(frames, wire.AppendEnvelope(nil, topic, "msg", data, 0))
	}
	return frames
}

// apiReplay serves GET /replay?topic=T&since=N and DELETE /replay[?topic=T].
func (g *Gateway) apiReplay(w http.ResponseWriter, r *http.Request, s *settings) {
	q := r.URL.Query()
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	if r.Method == http.MethodDelete && !q.Has("topic") {
		for _, rule := range g.ext.replay {
			if err := rule.store.ClearAll(ctx); err != nil {
				writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "clearing replay stores failed"))
				return
			}
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	t := q.Get("topic")
	if !s.checkQueryTopic(w, t) {
		return
	}
	rule := g.replayFor(t)
	if rule == nil {
		writeErr(w, apiErr(http.StatusNotFound, "NO_REPLAY", "topic "+t+" has no replay buffer"))
		return
	}
	if r.Method == http.MethodDelete {
		if err := rule.store.Clear(ctx, t); err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "clearing the replay store failed"))
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	var since uint64
	if v := q.Get("since"); v != "" {
		n, ok := wire.NonNegInt([]byte(v))
		if !ok {
			writeErr(w, apiErr(http.StatusBadRequest, "BAD_SINCE", "since must be an integer >= 0"))
			return
		}
		since = n
	}
	rng, err := rule.store.Since(ctx, t, since)
	if err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "reading the replay store failed"))
		return
	}
	type event struct {
		Seq   uint64   `json:"seq"`
		Event string   `json:"event"`
		Data  rawOrNil `json:"data"`
	}
	events := make([]event, len(rng.Entries))
	for i, e := range rng.Entries {
		events[i] = event{e.Seq, e.Event, rawOrNil(e.Data)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events, "truncated": rng.Truncated, "seq": rng.Head})
}

// rawOrNil marshals raw JSON, or null when empty.
type rawOrNil []byte

// MarshalJSON implements json.Marshaler.
func (r rawOrNil) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

// publishViaStores appends the events of topics with a shared replay store
// (order.go), outside every lock, stamping their seq in msgs. A store that
// publishes on the bus itself (replay.BusAppender) sends each event to
// every instance, this one included; the other events are delivered here in
// seq order and relayed. It returns the remaining events (no store, or a
// memory store) for the hub, with their positions in msgs. On a store
// error the events before the failing one are out; the rest are not.
func (g *Gateway) publishViaStores(ctx context.Context, msgs []bus.Message, unstamped []bool) (rest []bus.Message, restUnstamped []bool, pos []int, err error) {
	if !g.ext.shared {
		return msgs, unstamped, nil, nil
	}
	var relay []bus.Message
	defer func() {
		if len(relay) > 0 {
			if rerr := g.bus.Publish(ctx, relay); rerr != nil {
				g.logger.Warn("relaying a publish to other instances failed; local subscribers got it", zap.Error(rerr))
			}
		}
	}()
	for i := range msgs {
		m := &msgs[i]
		r := g.orderedRule(m.Topic)
		if r == nil {
			rest = append(rest, *m)
			restUnstamped = append(restUnstamped, noSeq(unstamped, i))
			pos = append(pos, i)
			continue
		}
		if ba, ok := r.store.(replay.BusAppender); ok {
			seq, aerr := ba.AppendAndPublish(ctx, m.Topic, m.Event, m.Data)
			if aerr != nil && !(seq > 0 && errors.Is(aerr, replay.ErrUnpublished)) {
				return rest, restUnstamped, pos, aerr
			}
			if aerr != nil {
				// Stored: the instances fill it from the store when the
				// bus is back (order.go), so the publish succeeded.
				g.logger.Warn("publish: the event is stored but the bus did not take it; subscribers get it once the bus is back", zap.String("topic", m.Topic), zap.Error(aerr))
			}
			m.Seq = seq
			continue
		}
		seq, aerr := r.store.Append(ctx, m.Topic, m.Event, m.Data)
		if aerr != nil {
			return rest, restUnstamped, pos, aerr
		}
		m.Seq = seq
		g.deliverOrdered(r, m, g.now())
		relay = append(relay, *m)
	}
	return rest, restUnstamped, pos, nil
}

// hasMemoryReplay reports whether a replay rule keeps its buffer in memory.
func hasMemoryReplay(cfgs []ReplayConfig) bool {
	for _, c := range cfgs {
		if c.NewStore == nil {
			return true
		}
	}
	return false
}
