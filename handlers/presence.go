package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/presence"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Vocabularies of a connection (docs/protocol.md §1.4), fixed when presence or a
// cursor snapshot first creates state for it.
const (
	vocabUnset uint32 = iota
	vocabCurrent
	vocabLegacy
)

// vocab returns the connection's vocabulary, fixing it on first use.
func (c *conn) vocab() uint32 {
	if v := c.vocabulary.Load(); v != vocabUnset {
		return v
	}
	v := vocabLegacy
	if c.current.Load() {
		v = vocabCurrent
	}
	if c.vocabulary.CompareAndSwap(vocabUnset, v) {
		return v
	}
	return c.vocabulary.Load()
}

// presenceFlushWindow merges presence changes per topic (§8: 20 ms).
const presenceFlushWindow = 20 * time.Millisecond

type presenceRule struct {
	pattern wire.Pattern
	cfg     PresenceConfig
	tracker presence.Tracker
}

// presenceTopics holds, per presence topic, who receives its frames and
// the changes waiting for the next flush.
type presenceTopics struct {
	g *Gateway
	topicIndex[*presTopic]

	retryMu sync.Mutex
	retries map[joinRef]pendingJoin
	retryAt time.Time
	backoff time.Duration
}

const (
	roleMember   uint8 = 1 // subscribed to the topic: a member
	roleObserver uint8 = 2 // subscribed to __presence:<t>
)

type presTopic struct {
	name  string // the presence topic t
	frame string // __presence:<t>
	rule  *presenceRule

	// topicState.mu serializes membership changes of the topic with their
	// frames, so a joiner's state always precedes the diffs that follow it
	// (§6.1).
	topicState
	recipients map[*conn]uint8
	pending    map[string]*presChange
	order      []string           // keys of pending, in first-change order
	held       map[*conn][][]byte // frames for recipients still waiting for their state
	timer      *time.Timer
	lastBeat   time.Time
}

type presChange struct {
	kind   presence.Kind
	data   json.RawMessage
	joiner *conn // legacy join frames skip the connection that caused them
}

func newPresenceRules(cfgs []PresenceConfig, b Backends, now func() time.Time, onChange presence.ChangeFunc) ([]*presenceRule, error) {
	rules := make([]*presenceRule, 0, len(cfgs))
	for _, c := range cfgs {
		hb := c.Heartbeat
		if hb < 0 {
			hb = 0 // the heartbeat frame is off; the backend keeps its own refresh default
		}
		tr, err := b.presence(presence.Config{TTL: c.TTL, Refresh: min(hb, c.TTL/3), Now: now, OnChange: onChange})
		if err != nil {
			return rules, fmt.Errorf("presence %q: %w", c.Topics, err)
		}
		rules = append(rules, &presenceRule{pattern: wire.Pattern(c.Topics), cfg: c, tracker: tr})
	}
	return rules, nil
}

// presenceRemote merges changes made on other instances (and expiries of
// dead instances' members) into the local topics' pending diffs. It is the
// trackers' OnChange: it only records and schedules.
func (g *Gateway) presenceRemote(changes []presence.Change) {
	for _, ch := range changes {
		pt, ok := g.presence.peek(ch.Topic)
		if !ok {
			continue // nobody here receives the topic's frames
		}
		pt.mu.Lock()
		if !pt.dead && ch.Kind != presence.NoChange {
			pt.record(ch.Member.Key, ch.Kind, ch.Member.Data, nil)
			g.schedulePresence(pt)
		}
		pt.mu.Unlock()
	}
}

func (g *Gateway) presenceFor(t string) *presenceRule {
	for _, r := range g.ext.presence {
		if r.pattern.Match(t) {
			return r
		}
	}
	return nil
}

// lock returns t's state locked and live, creating it if needed.
func (p *presenceTopics) lock(t string, rule *presenceRule) *presTopic {
	return p.topicIndex.lock(t, func() *presTopic {
		return &presTopic{name: t, frame: wire.PresencePrefix + t, rule: rule, recipients: make(map[*conn]uint8), pending: make(map[string]*presChange)}
	})
}

// release forgets pt when nobody receives it and nothing is pending.
// Called with pt.mu held.
func (p *presenceTopics) release(pt *presTopic) {
	if len(pt.recipients) > 0 || len(pt.pending) > 0 {
		return
	}
	p.drop(pt.name, pt)
}

// presenceKey is String(data[key]) of the member's projected data, or
// __conn:<id> when the projection has no such field (§6.1): with a select,
// the key field must be selected for tabs to dedupe.
func (c *conn) presenceKey(r *presenceRule, data json.RawMessage) string {
	if k := identityField(data, r.cfg.Key); k != "" {
		return k
	}
	return "__conn:" + c.id // anonymous: unique across instances (session ids are UUIDs)
}

// presenceJoin runs the presence join effect of an authorized subscribe
// to t (§6.1): the joiner gets the state, everyone the merged diff.
//
// No Redis call runs under the topic's lock, which the tracker's change
// callback and every flush need: the joiner is attached first with its
// frames held, the join and the list run unlocked, and the state goes
// out before what was held. A diff held meanwhile may repeat a change
// the state already shows; applying it again changes nothing.
func (g *Gateway) presenceJoin(c *conn, t string) {
	r := g.presenceFor(t)
	if r == nil {
		return
	}
	data := project(c.identity, r.cfg.Select)
	key := c.presenceKey(r, data)
	if c.presence == nil {
		c.presence = make(map[string]string)
	}
	c.presence[t] = key
	pt := g.presence.lock(t, r)
	pt.recipients[c] |= roleMember
	pt.hold(c)
	pt.mu.Unlock()

	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	ch, err := r.tracker.Join(ctx, t, key, c.id, data)
	if err != nil {
		// The connection stays subscribed and receives the topic's diffs;
		// the presence loop joins it once the backend answers again.
		g.logger.Warn("presence join failed; retrying in the background", zap.String("topic", t), zap.Error(err))
		g.presence.retryLater(pendingJoin{c: c, topic: t, key: key, data: data})
	}
	members, lerr := r.tracker.List(ctx, t)

	pt = g.presence.lock(t, r)
	defer pt.mu.Unlock()
	g.sendPresenceState(pt, c, members, lerr)
	if err == nil {
		g.presenceJoined(pt, c, key, data, ch)
	}
}

// presenceJoined records a successful join's change. Called with pt.mu held.
func (g *Gateway) presenceJoined(pt *presTopic, c *conn, key string, data json.RawMessage, ch presence.Change) {
	switch ch.Kind {
	case presence.Joined:
		pt.record(key, presence.Joined, data, c)
		g.events.post("presence.join", map[string]any{"topic": pt.name, "key": key, "data": data})
	case presence.Updated:
		pt.record(key, presence.Updated, data, nil)
	}
	g.schedulePresence(pt)
}

// presenceLeave runs the leave effect of an unsubscribe or close.
func (g *Gateway) presenceLeave(c *conn, t string) {
	key, ok := c.presence[t]
	if !ok {
		return
	}
	delete(c.presence, t)
	g.presence.forget(c, t)
	r := g.presenceFor(t)
	pt := g.presence.lock(t, r)
	if pt.recipients[c] &^= roleMember; pt.recipients[c] == 0 {
		delete(pt.recipients, c)
	}
	pt.mu.Unlock()

	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	ch, err := r.tracker.Leave(ctx, t, key, c.id)

	pt = g.presence.lock(t, r)
	defer pt.mu.Unlock()
	if err != nil {
		g.logger.Warn("presence leave failed; the entry expires after the presence ttl", zap.String("topic", t), zap.Error(err))
	} else if ch.Kind == presence.Left {
		pt.record(key, presence.Left, ch.Member.Data, nil)
		g.events.post("presence.leave", map[string]any{"topic": t, "key": key})
		g.schedulePresence(pt)
	}
	g.presence.release(pt)
}

// presenceObserve starts (on) or stops an observer of t (__presence:<t>).
func (g *Gateway) presenceObserve(c *conn, t string, on bool) {
	r := g.presenceFor(t)
	if r == nil {
		return
	}
	pt := g.presence.lock(t, r)
	if !on {
		if pt.recipients[c] &^= roleObserver; pt.recipients[c] == 0 {
			delete(pt.recipients, c)
		}
		g.presence.release(pt)
		pt.mu.Unlock()
		return
	}
	pt.recipients[c] |= roleObserver
	pt.hold(c)
	pt.mu.Unlock()
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	members, err := r.tracker.List(ctx, t)
	cancel()
	pt = g.presence.lock(t, r)
	g.sendPresenceState(pt, c, members, err)
	pt.mu.Unlock()
}

// hold starts holding c's frames of the topic until its state is sent.
// Called with pt.mu held.
func (pt *presTopic) hold(c *conn) {
	if pt.held == nil {
		pt.held = make(map[*conn][][]byte)
	}
	if _, ok := pt.held[c]; !ok {
		pt.held[c] = nil
	}
}

// deliver sends f to c, or holds it while c waits for its state. Called
// with pt.mu held.
func (pt *presTopic) deliver(c *conn, f []byte) {
	if q, ok := pt.held[c]; ok {
		pt.held[c] = append(q, f)
		return
	}
	c.send(f)
}

// record merges a change into the pending diff: the latest change per key
// wins (§6.1).
func (pt *presTopic) record(key string, kind presence.Kind, data json.RawMessage, joiner *conn) {
	if p, ok := pt.pending[key]; ok {
		switch {
		case p.kind == presence.Left && kind == presence.Joined:
			// Left and back within one window: for clients that knew the
			// key this is a data change (legacy needs a fresh list, as
			// 0.3.4 ignores join for a key it holds).
			kind, joiner = presence.Updated, nil
		case p.kind == presence.Joined && kind == presence.Updated:
			kind, joiner = presence.Joined, p.joiner // still new to everyone else
		}
		p.kind, p.data, p.joiner = kind, data, joiner
		return
	}
	pt.pending[key] = &presChange{kind: kind, data: data, joiner: joiner}
	pt.order = append(pt.order, key)
}

// schedulePresence arms the topic's flush timer. Called with pt.mu held.
func (g *Gateway) schedulePresence(pt *presTopic) {
	if pt.timer != nil || len(pt.pending) == 0 {
		return
	}
	pt.timer = time.AfterFunc(presenceFlushWindow, func() {
		g.safely("presence flush", func() { g.flushPresence(pt) })
	})
}

// sendPresenceState sends the full membership, read by the caller, to one
// connection in its vocabulary (presence_state or list, split when too
// large, §6.1), then the frames held for it since it was attached. A
// failed read sends no state: the held diffs still go. Called with pt.mu
// held.
func (g *Gateway) sendPresenceState(pt *presTopic, c *conn, members []presence.Member, err error) {
	held := pt.held[c]
	delete(pt.held, c)
	if err != nil {
		g.logger.Warn("presence list failed", zap.String("topic", pt.name), zap.Error(err))
	} else {
		event, current := "list", c.vocab() == vocabCurrent
		if current {
			event = "presence_state"
		}
		for _, f := range packMembers(pt.frame, event, members, current) {
			c.send(f)
		}
	}
	for _, f := range held {
		c.send(f)
	}
}

// maxStateFrame leaves room under the 1 MiB frame cap for the envelope.
const maxStateFrame = wire.MaxFrame - 4096

// packMembers encodes a snapshot. The first frame is the snapshot event
// with the members that fit; the rest follow as presence_diff joins
// (current) or join frames (legacy), as §6.1 prescribes.
func packMembers(topic, event string, members []presence.Member, current bool) [][]byte {
	var frames [][]byte
	var body bytes.Buffer
	n := 0
	first := true
	open := func() {
		body.Reset()
		n = 0
		switch {
		case current && first:
			body.WriteByte('{')
		case current:
			body.WriteString(`{"joins":{`)
		case first:
			body.WriteByte('[')
		}
	}
	closeFrame := func() {
		switch {
		case current && first:
			body.WriteByte('}')
			frames = append(frames, wire.AppendEnvelope(nil, topic, event, body.Bytes(), 0))
		case current:
			body.WriteString(`},"leaves":{}}`)
			frames = append(frames, wire.AppendEnvelope(nil, topic, "presence_diff", body.Bytes(), 0))
		case first:
			body.WriteByte(']')
			frames = append(frames, wire.AppendEnvelope(nil, topic, event, body.Bytes(), 0))
		}
		first = false
	}
	open()
	for _, m := range members {
		data := m.Data
		if len(data) == 0 {
			data = json.RawMessage("null")
		}
		var item []byte
		if current {
			item = append(wire.AppendString(nil, m.Key), ':')
			item = append(item, data...)
		} else {
			item = append(wire.AppendString([]byte(`{"key":`), m.Key), `,"data":`...)
			item = append(append(item, data...), '}')
		}
		if !current && !first {
			// Legacy overflow: one join frame per member.
			frames = append(frames, wire.AppendEnvelope(nil, topic, "join", item, 0))
			continue
		}
		if n > 0 && body.Len()+len(item)+1 > maxStateFrame {
			closeFrame()
			open()
			if !current {
				frames = append(frames, wire.AppendEnvelope(nil, topic, "join", item, 0))
				continue
			}
		}
		if n > 0 {
			body.WriteByte(',')
		}
		body.Write(item)
		n++
	}
	if first || (current && n > 0) {
		closeFrame()
	}
	return frames
}

// flushPresence sends the merged changes of one window: presence_diff to
// current recipients; leave, join and (for data changes) list frames to
// legacy ones (§6.1). The list a legacy data change needs is read before
// the topic is locked: a list newer than the diff is still right, as the
// diffs that follow it repeat what it shows.
func (g *Gateway) flushPresence(pt *presTopic) {
	var list [][]byte
	for listed := false; ; listed = true {
		pt.mu.Lock()
		if len(pt.pending) == 0 || g.ctx.Err() != nil {
			pt.timer = nil
			pt.mu.Unlock()
			return
		}
		if listed || !pt.needsList() {
			break
		}
		pt.mu.Unlock()
		ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
		members, err := pt.rule.tracker.List(ctx, pt.name)
		cancel()
		if err == nil {
			list = packMembers(pt.frame, "list", members, false)
		}
	}
	defer pt.mu.Unlock()
	pt.timer = nil
	var joins, leaves bytes.Buffer
	var legacyLeaves, legacyJoins [][]byte
	var joiners []*conn
	updated := false
	for _, key := range pt.order {
		p := pt.pending[key]
		data := p.data
		if len(data) == 0 {
			data = json.RawMessage("null")
		}
		item := append(wire.AppendString([]byte(`{"key":`), key), `,"data":`...)
		item = append(append(item, data...), '}')
		target := &joins
		switch p.kind {
		case presence.Left:
			target = &leaves
			legacyLeaves = append(legacyLeaves, wire.AppendEnvelope(nil, pt.frame, "leave", item, 0))
		case presence.Joined:
			legacyJoins = append(legacyJoins, wire.AppendEnvelope(nil, pt.frame, "join", item, 0))
			joiners = append(joiners, p.joiner)
		case presence.Updated:
			updated = true
		}
		if target.Len() > 0 {
			target.WriteByte(',')
		}
		target.Write(wire.AppendString(nil, key))
		target.WriteByte(':')
		target.Write(data)
	}
	clear(pt.pending)
	pt.order = pt.order[:0]
	if !updated {
		list = nil
	}

	diff := make([]byte, 0, joins.Len()+leaves.Len()+24)
	diff = append(diff, `{"joins":{`...)
	diff = append(append(diff, joins.Bytes()...), `},"leaves":{`...)
	diff = append(append(diff, leaves.Bytes()...), `}}`...)
	diffFrame := wire.AppendEnvelope(nil, pt.frame, "presence_diff", diff, 0)
	for c := range pt.recipients {
		if c.vocab() == vocabCurrent {
			pt.deliver(c, diffFrame)
			continue
		}
		for _, f := range legacyLeaves {
			pt.deliver(c, f)
		}
		for i, f := range legacyJoins {
			if joiners[i] != c {
				pt.deliver(c, f)
			}
		}
		for _, f := range list {
			pt.deliver(c, f)
		}
	}
	g.presence.release(pt)
}

// needsList reports whether the pending changes hold a data change that
// a legacy recipient must get as a list. Called with pt.mu held.
func (pt *presTopic) needsList() bool {
	legacy := false
	for c := range pt.recipients {
		if c.vocab() != vocabCurrent {
			legacy = true
			break
		}
	}
	if !legacy {
		return false
	}
	for _, p := range pt.pending {
		if p.kind == presence.Updated {
			return true
		}
	}
	return false
}

// presenceHeartbeat sends each presence topic's heartbeat when due.
func (g *Gateway) presenceHeartbeat(now time.Time) {
	for _, pt := range g.presence.all() {
		hb := pt.rule.cfg.Heartbeat
		if hb <= 0 {
			continue
		}
		pt.mu.Lock()
		due := !pt.dead && now.Sub(pt.lastBeat) >= hb && len(pt.recipients) > 0
		if due {
			pt.lastBeat = now
		}
		pt.mu.Unlock()
		if !due {
			continue
		}
		ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
		members, err := pt.rule.tracker.List(ctx, pt.name)
		cancel()
		if err != nil {
			continue
		}
		keys := []byte{'['}
		for i, m := range members {
			if i > 0 {
				keys = append(keys, ',')
			}
			keys = wire.AppendString(keys, m.Key)
		}
		frame := wire.AppendEnvelope(nil, pt.frame, "heartbeat", append(keys, ']'), 0)
		pt.mu.Lock()
		for c := range pt.recipients {
			pt.deliver(c, frame)
		}
		pt.mu.Unlock()
	}
}

// pendingJoin is a join the backend refused (an outage): the connection
// is subscribed, and the presence loop joins it when the backend answers.
type pendingJoin struct {
	c     *conn
	topic string
	key   string
	data  json.RawMessage
}

type joinRef struct {
	c     *conn
	topic string
}

// retryLater queues a failed join.
func (p *presenceTopics) retryLater(j pendingJoin) {
	p.retryMu.Lock()
	defer p.retryMu.Unlock()
	if p.retries == nil {
		p.retries = make(map[joinRef]pendingJoin)
	}
	p.retries[joinRef{j.c, j.topic}] = j
}

// forget drops c's queued join of topic: it left.
func (p *presenceTopics) forget(c *conn, topic string) {
	p.retryMu.Lock()
	delete(p.retries, joinRef{c, topic})
	p.retryMu.Unlock()
}

// retryJoins tries the queued joins again, at most once a second and
// backing off to every 5 s while they keep failing. A connection that
// left while its join was in flight is left again at once.
func (p *presenceTopics) retryJoins(now time.Time) {
	g := p.g
	p.retryMu.Lock()
	if len(p.retries) == 0 || now.Before(p.retryAt) {
		p.retryMu.Unlock()
		return
	}
	todo := make([]pendingJoin, 0, len(p.retries))
	for _, j := range p.retries {
		todo = append(todo, j)
	}
	p.retryMu.Unlock()
	failed := false
	for _, j := range todo {
		r := g.presenceFor(j.topic)
		ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
		ch, err := r.tracker.Join(ctx, j.topic, j.key, j.c.id, j.data)
		var members []presence.Member
		var lerr error
		if err == nil {
			members, lerr = r.tracker.List(ctx, j.topic)
		}
		cancel()
		if err != nil {
			// The backend still fails: the rest waits for the next round
			// rather than costing a timeout each.
			failed = true
			break
		}
		p.retryMu.Lock()
		_, wanted := p.retries[joinRef{j.c, j.topic}]
		delete(p.retries, joinRef{j.c, j.topic})
		p.retryMu.Unlock()
		if !wanted {
			ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
			_, _ = r.tracker.Leave(ctx, j.topic, j.key, j.c.id)
			cancel()
			continue
		}
		g.logger.Info("presence joined after the backend came back", zap.String("topic", j.topic))
		pt := p.lock(j.topic, r)
		g.sendPresenceState(pt, j.c, members, lerr)
		g.presenceJoined(pt, j.c, j.key, j.data, ch)
		pt.mu.Unlock()
	}
	p.retryMu.Lock()
	if failed {
		p.backoff = min(max(2*p.backoff, time.Second), 5*time.Second)
	} else {
		p.backoff = 0
	}
	p.retryAt = now.Add(p.backoff)
	p.retryMu.Unlock()
}

// stop cancels pending flush timers at Close.
func (p *presenceTopics) stop() {
	for _, pt := range p.all() {
		pt.mu.Lock()
		if pt.timer != nil {
			pt.timer.Stop()
		}
		pt.mu.Unlock()
	}
}

func (g *Gateway) apiPresence(w http.ResponseWriter, r *http.Request, s *settings) {
	t := r.URL.Query().Get("topic")
	if !s.checkQueryTopic(w, t) {
		return
	}
	rule := g.presenceFor(t)
	if rule == nil {
		writeErr(w, apiErr(http.StatusNotFound, "NO_PRESENCE", "topic "+t+" has no presence"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	if r.URL.Path == s.APIPath+"/presence/count" {
		n, err := rule.tracker.Count(ctx, t)
		if err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "reading presence failed"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"count": n})
		return
	}
	members, err := rule.tracker.List(ctx, t)
	if err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "reading presence failed"))
		return
	}
	type member struct {
		Key  string   `json:"key"`
		Data rawOrNil `json:"data"`
	}
	out := make([]member, len(members))
	for i, m := range members {
		out[i] = member{m.Key, rawOrNil(m.Data)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"members": out})
}
