package handlers

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Server-sent events (docs/protocol.md §10). An SSE stream is a conn like
// a WebSocket: the same hub subscriber, outbound queue, slow-consumer
// policy, resume machinery (§5.3) and close paths. It has no read loop:
// the request goroutine subscribes it, then waits until the stream ends
// and cleans up, and the conn's write loop turns each drained frame into
// an SSE event on the response.

// maxLastEventID bounds the Last-Event-ID header read; a longer one is
// taken as unreadable (the stream's topics resume as truncated).
const maxLastEventID = 64 << 10

// maxSafeSeq is the largest seq an id may name: seqs stay below 2^53
// (§5.2), what JavaScript numbers hold exactly.
const maxSafeSeq = 1<<53 - 1

// sseIDVersion starts every event id, so the format can change without an
// old id being read in a new way.
const sseIDVersion = "1"

// sseStream is the HTTP side of an SSE conn.
//
// mu is held for every write to the response. The request goroutine holds
// it from registering the conn until the response's status is decided, so
// the write loop, which may start as soon as the first frame is queued,
// writes nothing before the 200 and nothing after a refusal. Once ended,
// nothing more is written: the request goroutine may return, and with it
// the ResponseWriter goes back to the server.
type sseStream struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	mu     sync.Mutex
	opened bool // the 200 is out: events may be written
	ended  bool
	done   chan struct{} // closed once ended
	buf    []byte        // scratch for one drain

	// The resume state of the stream's id (§10.3), written under mu.
	// topics is the stream's topic list, sorted and unique; seqs[i] is the
	// last seq written on topics[i] when known[i]; index maps the topics
	// with a replay rule to their position.
	topics []string
	key    string // hash of topics, the id's second field
	index  map[string]int
	seqs   []uint64
	known  []bool
}

func newSSEStream(w http.ResponseWriter, topics []string) *sseStream {
	return &sseStream{
		w: w, rc: http.NewResponseController(w), done: make(chan struct{}),
		topics: topics, key: sseTopicsKey(topics), index: make(map[string]int),
		seqs: make([]uint64, len(topics)), known: make([]bool, len(topics)),
	}
}

// sseTopicsKey hashes a stream's sorted topic list (FNV-1a, 64 bits): an
// id names seqs by position in that list, so an id made for another list
// must not be read against this one. Topics hold no newline (§4.1).
func sseTopicsKey(topics []string) string {
	h := fnv.New64a()
	for _, t := range topics {
		_, _ = h.Write([]byte(t))
		_, _ = h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// appendID appends the stream's current event id:
// 1:<key>:<seq>,<seq>,… with one entry per topic, in topics order, empty
// when no seq is known (a topic without a replay rule, or one whose head
// could not be read).
func (s *sseStream) appendID(b []byte) []byte {
	b = append(b, sseIDVersion...)
	b = append(b, ':')
	b = append(b, s.key...)
	b = append(b, ':')
	for i := range s.topics {
		if i > 0 {
			b = append(b, ',')
		}
		if s.known[i] {
			b = strconv.AppendUint(b, s.seqs[i], 10)
		}
	}
	return b
}

// parseSSEID reads an id made by appendID for the same topic list: the
// seq of each position, known[i] false for an empty entry. ok is false
// for anything else, which the caller reads as "the client may have
// missed anything".
func parseSSEID(id, key string, n int) (seqs []uint64, known []bool, ok bool) {
	if len(id) > maxLastEventID {
		return nil, nil, false
	}
	v, rest, ok1 := strings.Cut(id, ":")
	k, list, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || v != sseIDVersion || k != key {
		return nil, nil, false
	}
	seqs, known = make([]uint64, n), make([]bool, n)
	i := 0
	for entry := range strings.SplitSeq(list, ",") {
		if i == n {
			return nil, nil, false
		}
		if entry != "" {
			seq, err := strconv.ParseUint(entry, 10, 64)
			if err != nil || seq > maxSafeSeq || (len(entry) > 1 && entry[0] == '0') {
				return nil, nil, false
			}
			seqs[i], known[i] = seq, true
		}
		i++
	}
	if i != n {
		return nil, nil, false
	}
	return seqs, known, true
}

// write writes batch as SSE events and flushes. It returns how many frames
// went out and whether a write failed; after a failure or once the stream
// ended it writes nothing more.
func (s *sseStream) write(c *conn, batch []outFrame) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock() // also on a panic: recoverPanic then takes mu
	if s.ended {
		return 0, false
	}
	// A deadline per drain: a client that stops reading is dropped after
	// write_timeout, as a WebSocket is. It is cleared after the drain: on
	// HTTP/2 a write deadline that passes resets the stream even when no
	// write is pending (TestSSEIdleHTTP2StreamOutlivesTheWriteTimeout).
	_ = s.rc.SetWriteDeadline(time.Now().Add(c.g.settings().WriteTimeout))
	defer func() { _ = s.rc.SetWriteDeadline(time.Time{}) }()
	buf := s.buf[:0]
	n := 0
	for i, f := range batch {
		buf = s.appendEvent(buf, f.b)
		if len(buf) < corkFlushAt && i < len(batch)-1 {
			continue
		}
		if _, err := s.w.Write(buf); err != nil {
			s.endLocked()
			return n, true
		}
		n, buf = i+1, buf[:0]
	}
	if err := s.rc.Flush(); err != nil {
		s.endLocked()
		return n, true
	}
	if cap(buf) <= 64<<10 { // drop big buffers (golang/go#23199)
		s.buf = buf[:0]
	} else {
		s.buf = nil
	}
	return n, false
}

// appendEvent appends the SSE event of one queued frame (§10.2): an
// envelope becomes a message event, with the stream's id when it moves a
// replayed topic's seq; the heartbeat a comment; another control frame
// an event named after its type (welcome carries the stream's first id).
func (s *sseStream) appendEvent(b, frame []byte) []byte {
	switch {
	case isEnvelope(frame):
		if s.advance(frame) {
			b = s.appendID(append(b, "id: "...))
			b = append(b, '\n')
		}
	case bytes.Equal(frame, wire.HeartbeatFrame):
		return append(b, ": keep-alive\n\n"...)
	default:
		typ := controlType(frame)
		b = append(append(append(b, "event: "...), typ...), '\n')
		if typ == "welcome" && len(s.index) > 0 {
			b = s.appendID(append(b, "id: "...))
			b = append(b, '\n')
		}
	}
	return appendData(b, frame)
}

// advance records the seq of an envelope on a replayed topic of the
// stream and reports whether it did. Seqs of one topic reach a conn in
// increasing order (§5.1 rule 6).
func (s *sseStream) advance(env []byte) bool {
	seq := envelopeSeq(env)
	if seq == 0 {
		return false
	}
	rest := env[len(envelopePrefix)+1:] // after {"topic":"
	end := bytes.IndexByte(rest, '"')   // topics hold no quote (§4.1)
	if end < 0 {
		return false
	}
	i, ok := s.index[string(rest[:end])]
	if !ok {
		return false
	}
	s.seqs[i], s.known[i] = seq, true
	return true
}

// envelopeSeq returns the seq AppendEnvelope put at an envelope's end,
// or 0. Only the envelope's own member can end it: `,"seq":<digits>}`
// right before the closing brace, which data never produces, as data is
// followed by that brace or by the seq member.
func envelopeSeq(env []byte) uint64 {
	if len(env) < 2 || env[len(env)-1] != '}' {
		return 0
	}
	i := len(env) - 1
	for i > 0 && env[i-1] >= '0' && env[i-1] <= '9' {
		i--
	}
	if i == len(env)-1 || !bytes.HasSuffix(env[:i], []byte(`,"seq":`)) {
		return 0
	}
	seq, err := strconv.ParseUint(string(env[i:len(env)-1]), 10, 64)
	if err != nil {
		return 0
	}
	return seq
}

// controlType returns the type of a control frame, {"type":"<t>",…}, or
// "control".
func controlType(frame []byte) string {
	const prefix = `{"type":"`
	if !bytes.HasPrefix(frame, []byte(prefix)) {
		return "control"
	}
	rest := frame[len(prefix):]
	end := bytes.IndexByte(rest, '"')
	if end <= 0 {
		return "control"
	}
	return string(rest[:end])
}

// appendData appends frame as data lines and the blank line that ends the
// event. JSON holds line breaks only as whitespace between tokens (a raw
// one inside a string is invalid), and the client joins data lines with
// LF, so a frame with CR LF or CR line breaks arrives with LF instead.
func appendData(b, frame []byte) []byte {
	for {
		b = append(b, "data: "...)
		i := bytes.IndexAny(frame, "\r\n")
		if i < 0 {
			b = append(append(b, frame...), '\n')
			return append(b, '\n')
		}
		b = append(append(b, frame[:i]...), '\n')
		if frame[i] == '\r' && i+1 < len(frame) && frame[i+1] == '\n' {
			i++
		}
		frame = frame[i+1:]
	}
}

// finish ends the stream with a close event naming the code and reason
// the WebSocket would have been closed with (§10.5).
func (s *sseStream) finish(code int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if s.opened {
		data, _ := json.Marshal(struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}{code, reason})
		b := appendData([]byte("event: close\n"), data)
		_ = s.rc.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := s.w.Write(b); err == nil {
			_ = s.rc.Flush()
		}
		_ = s.rc.SetWriteDeadline(time.Time{})
	}
	s.endLocked()
}

// end ends the stream without a close event.
func (s *sseStream) end() {
	s.mu.Lock()
	s.endLocked()
	s.mu.Unlock()
}

func (s *sseStream) endLocked() {
	if !s.ended {
		s.ended = true
		close(s.done)
	}
}

// sseTopics reads the stream's topics from the query: sorted, without
// repeats. It returns a refusal message for a stream that would have no
// topic, too many, or an invalid or system one (§10.1).
func sseTopics(q url.Values, s *settings) ([]string, string) {
	topics := slices.Clone(q["topic"])
	if len(topics) == 0 {
		return nil, "No topic: name at least one, as ?topic=<name>"
	}
	slices.Sort(topics)
	topics = slices.Compact(topics)
	if len(topics) > s.MaxSubscriptions {
		return nil, "Too many topics: at most " + strconv.Itoa(s.MaxSubscriptions)
	}
	for _, t := range topics {
		if !wire.ValidTopic(t, s.AllowNonASCIITopics) || wire.IsSystem(t) {
			return nil, "Invalid topic: " + strconv.Quote(t)
		}
	}
	return topics, ""
}

// serveSSE opens an SSE stream (§10.1): the checks of a WebSocket upgrade
// (§2.1), then the subscribe of every topic at once, authorized like a
// subscribe-batch (§3.5) and resumed from Last-Event-ID, then the events
// until the stream ends.
func (g *Gateway) serveSSE(w http.ResponseWriter, r *http.Request, s *settings, unload <-chan struct{}) {
	fail := func(status int, msg string) {
		g.m.sseRequest(strconv.Itoa(status))
		w.Header().Set("Cache-Control", "no-store")
		refuse(w, status, msg)
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		fail(http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	ip, status, msg := g.admit(w, r, s, "Too many connections from this address")
	if status != 0 {
		fail(status, msg)
		return
	}
	// A browser sends Origin on a cross-origin EventSource only; without
	// one the request is same-origin or not from a browser, and a page of
	// another site can read no stream it is not allowed by CORS below.
	origin := r.Header.Get("Origin")
	if origin != "" && !s.originAllowed(r) {
		fail(http.StatusForbidden, "Origin not allowed")
		return
	}
	topics, msg := sseTopics(r.URL.Query(), s)
	if msg != "" {
		fail(http.StatusBadRequest, msg)
		return
	}
	identity, grant, status, msg := g.admitIdentity(w, r, ip, s)
	if status != 0 {
		fail(status, msg)
		return
	}
	c := &conn{g: g, id: uuid.NewString(), ip: ip, identity: identity, grant: grant, sse: newSSEStream(w, topics)}
	c.planResume(r.Header.Get("Last-Event-ID"))
	status, msg = g.openSSE(c, s, origin)
	if status != 0 {
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		fail(status, msg)
		return
	}
	g.m.sseRequest("200")
	defer func() {
		c.cleanup()
		// The connection may serve another request: no deadline of the
		// stream's may outlive it.
		_ = c.sse.rc.SetWriteDeadline(time.Time{})
		g.wg.Done()
	}()
	var spread <-chan time.Time
	for {
		select {
		case <-c.sse.done:
			return
		case <-r.Context().Done():
			return
		case <-unload:
			// The server that took the request is going away: end the
			// stream, at a random point of the spread so its clients do
			// not all reconnect at once.
			unload = nil
			d := time.Duration(0)
			if sp := g.settings().ShutdownSpread; sp > 0 {
				d = rand.N(sp)
			}
			t := time.NewTimer(d)
			defer t.Stop()
			spread = t.C
		case <-spread:
			c.closeWith(websocket.StatusGoingAway, "Server shutting down")
		}
	}
}

// planResume sets the stream's resume plan (§10.3) from the client's
// Last-Event-ID, reading the heads it needs from the stores: every topic
// with a replay rule gets a pending resume, so that its subscribe sends
// what the client missed before anything live and the stream's id knows
// the topic's seq from the first event on. A topic the id names resumes
// from its seq; without an id a topic starts at its head; with an id that
// does not fit the stream (another topic list, unreadable), or an empty
// entry, it starts at its head after the truncated notice. A topic whose
// head cannot be read starts live, its seq unknown until its first event.
func (c *conn) planResume(lastEventID string) {
	st := c.sse
	var seqs []uint64
	var known []bool
	resuming := lastEventID != ""
	fits := false
	if resuming {
		seqs, known, fits = parseSSEID(lastEventID, st.key, len(st.topics))
	}
	now := c.g.now()
	// One deadline for every head read: a stream of many topics on a
	// store that does not answer waits storeTimeout once, not per topic.
	ctx, cancel := context.WithTimeout(c.g.ctx, storeTimeout)
	defer cancel()
	for i, t := range st.topics {
		if c.g.replayFor(t) == nil {
			continue
		}
		st.index[t] = i
		if fits && known[i] {
			c.setResume(t, pendingResume{after: seqs[i], expires: now.Add(pendingResumeTTL)})
			st.seqs[i], st.known[i] = seqs[i], true
			continue
		}
		head, err := c.g.head(ctx, t)
		if err != nil {
			continue
		}
		c.setResume(t, pendingResume{after: head, expires: now.Add(pendingResumeTTL), lost: resuming})
		st.seqs[i], st.known[i] = head, true
	}
}

func (c *conn) setResume(t string, p pendingResume) {
	if c.resumes == nil {
		c.resumes = make(map[string]pendingResume)
	}
	c.resumes[t] = p
}

// openSSE registers c, subscribes it and answers 200, or refuses: it
// returns the refusal's status and message, with c cleaned up.
func (g *Gateway) openSSE(c *conn, s *settings, origin string) (int, string) {
	status, msg, registered := g.subscribeSSE(c, s, origin)
	if status != 0 && registered {
		c.cleanup()
		g.wg.Done()
	}
	return status, msg
}

// subscribeSSE registers c (which queues its welcome) and subscribes it to
// its topics with writes held, then, unless a topic is refused, sends the 200
// and lets the write loop go.
func (g *Gateway) subscribeSSE(c *conn, s *settings, origin string) (status int, msg string, registered bool) {
	st := c.sse
	st.mu.Lock()
	defer st.mu.Unlock()
	if !g.register(c, s) {
		st.endLocked()
		return http.StatusServiceUnavailable, "Server shutting down", false
	}
	entries := make([]subEntry, len(st.topics))
	for i, t := range st.topics {
		entries[i] = subEntry{topic: t, str: true}
	}
	if decisions, ok := c.decide(entries, nil); !ok {
		status, msg = http.StatusTooManyRequests, "Rate limited"
	} else if status, msg = sseDenial(entries, decisions); status == 0 {
		c.apply(entries, decisions, nil)
		status, msg = sseDenial(entries, nil)
	}
	if status == 0 && st.ended {
		// Closed while subscribing (an API disconnect, a slow consumer).
		status, msg = http.StatusServiceUnavailable, "Closed while opening"
	}
	if status != 0 {
		st.endLocked()
		return status, msg, true
	}
	h := st.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx would otherwise buffer the stream
	if origin != "" {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	}
	st.w.WriteHeader(http.StatusOK)
	if err := st.rc.Flush(); err != nil {
		st.endLocked() // the server cannot stream this response
	}
	st.opened = true
	return 0, "", true
}

// sseDenial maps the first refused entry to the stream's refusal: a topic
// the application or the token refuses is 403, a failed subscribe hook
// 503 (the client may retry), anything else 400. decisions, when given,
// holds the subscribe hook's answers for entries not decided yet.
func sseDenial(entries []subEntry, decisions map[string]string) (int, string) {
	for _, e := range entries {
		reason := e.ack
		if reason == "" && decisions != nil {
			reason = decisions[e.topic]
		}
		if reason == "" || reason == "ok" {
			continue
		}
		msg := "Topic refused: " + strconv.Quote(e.topic) + " (" + reason + ")"
		switch reason {
		case ReasonInternalError:
			return http.StatusServiceUnavailable, msg
		case ReasonInvalidTopic, ReasonRateLimited:
			return http.StatusBadRequest, msg
		}
		return http.StatusForbidden, msg
	}
	return 0, ""
}
