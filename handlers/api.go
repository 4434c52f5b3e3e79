package handlers

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// APIError is an HTTP API failure: a status and a stable code, written as
// {"error": message, "code": code}.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

func apiErr(status int, code, msg string) *APIError {
	return &APIError{Status: status, Code: code, Message: msg}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.Status, map[string]string{"error": e.Message, "code": e.Code})
}

// apiRoutes are the routes of the HTTP API as http.ServeMux patterns,
// relative to APIPath. Topics travel in bodies or query strings, never in
// path segments.
var apiRoutes = []struct {
	pattern string
	serve   func(g *Gateway, w http.ResponseWriter, r *http.Request, s *settings)
}{
	{"POST /publish", (*Gateway).apiPublish},
	{"POST /send", (*Gateway).apiSend},
	{"POST /request", (*Gateway).apiRequest},
	{"POST /disconnect", (*Gateway).apiDisconnect},
	{"GET /seq", (*Gateway).apiSeq},
	{"GET /replay", (*Gateway).apiReplay},
	{"DELETE /replay", (*Gateway).apiReplay},

	{"GET /presence", (*Gateway).apiPresence},
	{"GET /presence/count", (*Gateway).apiPresence},
	{"GET /cursors", (*Gateway).apiCursors},

	{"GET /groups", (*Gateway).apiGroups},
	{"PUT /groups/meta", (*Gateway).apiGroups},
	{"POST /groups/publish", (*Gateway).apiGroups},
	{"POST /groups/close", (*Gateway).apiGroups},
	{"POST /groups/join", (*Gateway).apiGroups},
	{"POST /groups/leave", (*Gateway).apiGroups},

	{"POST /ratelimit/consume", (*Gateway).apiRateLimit},
	{"POST /ratelimit/reset", (*Gateway).apiRateLimit},
	{"POST /ratelimit/ban", (*Gateway).apiRateLimit},
	{"POST /ratelimit/unban", (*Gateway).apiRateLimit},
	{"GET /stats", (*Gateway).apiStats},
	{"GET /health", (*Gateway).apiHealth},
}

// apiCall is what a route's handler serves: the gateway and the settings
// of the request, which the shared mux passes in the request's context.
type apiCall struct {
	g *Gateway
	s *settings
}

type apiCallKey struct{}

// apiMux routes the API's sub-paths; apiMethods lists, by sub-path, the
// methods its routes take, for the Allow header of a 405. Both are built
// once for every gateway.
var apiMux, apiMethods = func() (*http.ServeMux, map[string][]string) {
	mux := http.NewServeMux()
	methods := make(map[string][]string)
	for _, rt := range apiRoutes {
		serve := rt.serve
		mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			call := r.Context().Value(apiCallKey{}).(apiCall)
			serve(call.g, w, r, call.s)
		})
		method, path, _ := strings.Cut(rt.pattern, " ")
		methods[path] = append(methods[path], method)
	}
	return mux, methods
}()

// pathUnder reports whether p is prefix or under it; prefix has no
// trailing slash (NormalizeAPIPath).
func pathUnder(p, prefix string) bool {
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// serveAPI serves a request under APIPath: the route the mux matches on
// the sub-path, or a JSON 404 or 405.
func (g *Gateway) serveAPI(w http.ResponseWriter, r *http.Request, s *settings) {
	if e := s.checkKey(r); e != nil {
		writeErr(w, e)
		return
	}
	g.route(w, r, s, strings.TrimPrefix(r.URL.Path, s.APIPath))
}

// ServeAdmin serves an API route for Caddy's admin endpoint, which is
// trusted as it is (Caddy guards it): sub is the route's path, such as
// "/stats" or "/presence", and no key is asked for.
func (g *Gateway) ServeAdmin(w http.ResponseWriter, r *http.Request, sub string) {
	g.route(w, r, g.settings(), sub)
}

// route serves the API route at sub.
func (g *Gateway) route(w http.ResponseWriter, r *http.Request, s *settings, sub string) {
	// Routes see the request as it came, full path included; the mux
	// matches a copy holding the sub-path.
	match := r.Clone(r.Context())
	match.URL.Path, match.URL.RawPath = sub, ""
	h, pattern := apiMux.Handler(match)
	if pattern == "" || path.Clean(sub) != sub {
		// The mux's own answers (404, 405, a redirect to a cleaned path)
		// are plain text and know nothing of the prefix.
		if methods := apiMethods[sub]; len(methods) > 0 {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeErr(w, apiErr(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", r.Method+" not allowed; use "+strings.Join(methods, " or ")))
			return
		}
		writeErr(w, apiErr(http.StatusNotFound, "NOT_FOUND", "no such api route: "+sub))
		return
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, s.APIMaxBody)
	}
	h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiCallKey{}, apiCall{g, s})))
}

// checkKey enforces the bearer key; with none configured only loopback
// peers are served. The peer is the TCP address, not a forwarded header.
func (s *settings) checkKey(r *http.Request) *APIError {
	if s.APIKey == "" {
		ip := net.ParseIP(remoteHost(r))
		if ip == nil || !ip.IsLoopback() {
			return apiErr(http.StatusForbidden, "FORBIDDEN", "the api serves only loopback callers when no key is configured")
		}
		return nil
	}
	auth := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		w := apiErr(http.StatusUnauthorized, "UNAUTHORIZED", "missing bearer key")
		return w
	}
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(auth[len(prefix):])), []byte(s.APIKey)) != 1 {
		return apiErr(http.StatusForbidden, "FORBIDDEN", "wrong api key")
	}
	return nil
}

// readBody reads a request body already capped by MaxBytesReader.
func readBody(r *http.Request) ([]byte, *APIError) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, apiErr(http.StatusRequestEntityTooLarge, "BODY_TOO_LARGE", "request body too large")
		}
		return nil, apiErr(http.StatusBadRequest, "BAD_BODY", "reading request body: "+err.Error())
	}
	return buf.Bytes(), nil
}

func decodeStrict(b []byte, v any) *APIError {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiErr(http.StatusBadRequest, "BAD_JSON", "invalid json body: "+err.Error())
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, "BAD_JSON", "invalid json body: trailing data")
	}
	return nil
}

// publishItem is one event of a publish body.
type publishItem struct {
	Topic    *string         `json:"topic"`
	Event    *string         `json:"event"`
	Data     json.RawMessage `json:"data"`
	Seq      *bool           `json:"seq,omitempty"`
	Coalesce string          `json:"coalesce,omitempty"`
}

// message validates an item (§4.2) and returns it as a bus message with
// its data compacted. direct allows any non-system topic for direct sends.
func (p *publishItem) message(s *settings, direct bool) (bus.Message, *APIError) {
	if p.Topic == nil || !wire.ValidTopic(*p.Topic, s.AllowNonASCIITopics) {
		return bus.Message{}, apiErr(http.StatusBadRequest, ReasonInvalidTopic, "topic must be 1-256 printable characters without '\"' or '\\'")
	}
	if wire.IsSystem(*p.Topic) {
		return bus.Message{}, apiErr(http.StatusBadRequest, ReasonInvalidTopic, "topics beginning with __ are reserved to the gateway")
	}
	if p.Event == nil || !wire.ValidEvent(*p.Event) {
		return bus.Message{}, apiErr(http.StatusBadRequest, "INVALID_EVENT", "event must be 1-256 bytes without control characters, '\"' or '\\'")
	}
	var data []byte
	if len(p.Data) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, p.Data); err != nil {
			return bus.Message{}, apiErr(http.StatusBadRequest, "BAD_JSON", "data is not valid json")
		}
		data = buf.Bytes()
		// encoding/json passes invalid UTF-8 inside strings through raw; a
		// text frame carrying it makes browsers fail the connection (RFC
		// 6455 §8.1), every subscriber's at once (TestHostileAPIBodies).
		if !utf8.Valid(data) {
			return bus.Message{}, apiErr(http.StatusBadRequest, "BAD_JSON", "data is not valid UTF-8")
		}
	}
	// Stamped envelopes carry at most ,"seq":9007199254740991 more.
	if wire.EnvelopeSize(*p.Topic, *p.Event, data, 1<<53) > wire.MaxFrame {
		return bus.Message{}, apiErr(http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "the envelope would exceed 1048576 bytes")
	}
	return bus.Message{Topic: *p.Topic, Event: *p.Event, Data: data}, nil
}

// parsePublish reads one event or an array of them, applying coalesce
// keys: only the last event per key survives, at its own position (§7.2).
func parsePublish(body []byte, s *settings) ([]bus.Message, []bool, *APIError) {
	t := bytes.TrimSpace(body)
	var items []publishItem
	batch := len(t) > 0 && t[0] == '['
	if batch {
		if e := decodeStrict(t, &items); e != nil {
			return nil, nil, e
		}
		if len(items) == 0 {
			return nil, nil, apiErr(http.StatusBadRequest, "EMPTY_BATCH", "a batch needs at least one event")
		}
	} else {
		var one publishItem
		if e := decodeStrict(t, &one); e != nil {
			return nil, nil, e
		}
		items = []publishItem{one}
	}
	last := make(map[string]int)
	for i, it := range items {
		if it.Coalesce != "" {
			last[it.Coalesce] = i
		}
	}
	msgs := make([]bus.Message, 0, len(items))
	unstamped := make([]bool, 0, len(items))
	for i := range items {
		it := &items[i]
		m, e := it.message(s, false)
		if e != nil {
			return nil, nil, e
		}
		if it.Coalesce != "" && last[it.Coalesce] != i {
			continue
		}
		msgs = append(msgs, m)
		unstamped = append(unstamped, it.Seq != nil && !*it.Seq)
	}
	return msgs, unstamped, nil
}

// publish stamps and delivers locally, then relays through the bus;
// events of topics whose replay store publishes through the bus go that
// way instead. On a store error the events before the failing one are
// delivered and relayed; the error is returned for the rest.
func (g *Gateway) publish(ctx context.Context, msgs []bus.Message, unstamped []bool, source string) error {
	local, localUnstamped, pos, err := g.publishViaStores(ctx, msgs, unstamped)
	if err != nil {
		g.logger.Warn("publish: the replay store refused an event; it and the events after it were not published", zap.Error(err))
	}
	n := len(msgs) - len(local)
	if len(local) > 0 {
		if _, herr := g.hub.publish(local, true, localUnstamped, g.now()); herr != nil {
			g.logger.Warn("publish: the replay store refused an event; it and the events after it were not published", zap.Error(herr))
			k := 0
			for k < len(local) && (local[k].Seq > 0 || noSeq(localUnstamped, k)) {
				k++
			}
			local = local[:k]
			if err == nil {
				err = herr
			}
		}
		for j := range local {
			if pos != nil {
				msgs[pos[j]].Seq = local[j].Seq
			}
		}
		if len(local) > 0 {
			if rerr := g.bus.Publish(ctx, local); rerr != nil {
				g.logger.Warn("relaying a publish to other instances failed; local subscribers got it", zap.Error(rerr))
			}
		}
		n += len(local)
	}
	g.m.published(source, n)
	return err
}

// Publish publishes messages from Go code, as the HTTP API does; it returns
// the seq stamped on each (0 for none). Topics and events must be valid.
func (g *Gateway) Publish(ctx context.Context, msgs []bus.Message) ([]uint64, error) {
	err := g.publish(ctx, msgs, nil, "go")
	seqs := make([]uint64, len(msgs))
	for i := range msgs {
		seqs[i] = msgs[i].Seq
	}
	return seqs, err
}

func (g *Gateway) apiPublish(w http.ResponseWriter, r *http.Request, s *settings) {
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	msgs, unstamped, e := parsePublish(body, s)
	if e != nil {
		writeErr(w, e)
		return
	}
	batch := bytes.TrimSpace(body)[0] == '['
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := g.publish(ctx, msgs, unstamped, "api"); err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "the replay store is unavailable; events from the first failed one on were not published"))
		return
	}
	seqs := make([]*uint64, len(msgs))
	for i := range msgs {
		if msgs[i].Seq > 0 {
			v := msgs[i].Seq
			seqs[i] = &v
		}
	}
	if batch {
		writeJSON(w, http.StatusOK, map[string]any{"seqs": seqs})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"seq": seqs[0]})
}

// target names the connections of a send, request or disconnect.
type target struct {
	User       string `json:"user"`
	Connection string `json:"connection"`
}

func (t target) validate() *APIError {
	if (t.User == "") == (t.Connection == "") {
		return apiErr(http.StatusBadRequest, "BAD_TARGET", "give exactly one of user or connection")
	}
	return nil
}

func (g *Gateway) targets(t target) []*conn {
	if t.Connection != "" {
		if c := g.conns.get(t.Connection); c != nil {
			return []*conn{c}
		}
		return nil
	}
	return g.conns.user(t.User)
}

// sendUser enqueues frame to every local connection of user.
func (g *Gateway) sendUser(user string, frame []byte) int {
	n := 0
	for _, c := range g.conns.user(user) {
		if c.send(frame) {
			n++
		}
	}
	return n
}

func (g *Gateway) apiSend(w http.ResponseWriter, r *http.Request, s *settings) {
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	var req struct {
		target
		publishItem
	}
	if e := decodeStrict(body, &req); e != nil {
		writeErr(w, e)
		return
	}
	if e := req.target.validate(); e != nil {
		writeErr(w, e)
		return
	}
	if req.Seq != nil || req.Coalesce != "" {
		writeErr(w, apiErr(http.StatusBadRequest, "BAD_JSON", "seq and coalesce apply to publishes only"))
		return
	}
	m, e := req.publishItem.message(s, true)
	if e != nil {
		writeErr(w, e)
		return
	}
	// Direct sends never carry seq (§5.1 rule 5).
	frame := wire.AppendEnvelope(nil, m.Topic, m.Event, m.Data, 0)
	n := 0
	for _, c := range g.targets(req.target) {
		if c.send(frame) {
			n++
		}
	}
	if req.User == "" {
		// A connection id names one connection of this instance.
		writeJSON(w, http.StatusOK, deliveredAnswer{Delivered: n})
		return
	}
	m.User = req.User
	writeJSON(w, http.StatusOK, g.deliverElsewhere(r, m, n, func() {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		_ = g.bus.Publish(ctx, []bus.Message{m})
	}))
}

func (g *Gateway) apiRequest(w http.ResponseWriter, r *http.Request, s *settings) {
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	var req struct {
		Connection string          `json:"connection"`
		Event      string          `json:"event"`
		Data       json.RawMessage `json:"data"`
	}
	if e := decodeStrict(body, &req); e != nil {
		writeErr(w, e)
		return
	}
	if !wire.ValidEvent(req.Event) {
		writeErr(w, apiErr(http.StatusBadRequest, "INVALID_EVENT", "event must be 1-256 bytes without control characters, '\"' or '\\'"))
		return
	}
	if len(req.Data) > 0 && !json.Valid(req.Data) {
		writeErr(w, apiErr(http.StatusBadRequest, "BAD_JSON", "data is not valid json"))
		return
	}
	c := g.conns.get(req.Connection)
	if c == nil {
		writeErr(w, apiErr(http.StatusNotFound, "UNKNOWN_CONNECTION", errUnknownConn.Error()))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.RequestTimeout)
	defer cancel()
	rep, err := c.request(ctx, req.Event, req.Data)
	switch {
	case errors.Is(err, errLegacyConnection):
		writeErr(w, apiErr(http.StatusConflict, "LEGACY_CONNECTION", err.Error()))
	case errors.Is(err, errConnectionClosed):
		writeErr(w, apiErr(http.StatusGone, "CONNECTION_CLOSED", err.Error()))
	case errors.Is(err, errRequestTimeout):
		writeErr(w, apiErr(http.StatusGatewayTimeout, "REQUEST_TIMEOUT", err.Error()))
	case rep.err != "":
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": rep.err, "code": "CLIENT_ERROR"})
	default:
		data := rep.data
		if len(data) == 0 {
			data = json.RawMessage("null")
		}
		writeJSON(w, http.StatusOK, map[string]json.RawMessage{"data": data})
	}
}

func (g *Gateway) apiDisconnect(w http.ResponseWriter, r *http.Request, s *settings) {
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	var req struct {
		target
		Code int `json:"code"`
	}
	if e := decodeStrict(body, &req); e != nil {
		writeErr(w, e)
		return
	}
	if e := req.target.validate(); e != nil {
		writeErr(w, e)
		return
	}
	reason := map[int]string{4401: "Unauthorized", 4403: "Forbidden"}[req.Code]
	if reason == "" {
		writeErr(w, apiErr(http.StatusBadRequest, "BAD_CODE", "code must be 4401 (identity invalid) or 4403 (banned)"))
		return
	}
	cs := g.targets(req.target)
	for _, c := range cs {
		c.closeAsync(websocket.StatusCode(req.Code), reason)
	}
	writeJSON(w, http.StatusOK, map[string]int{"closed": len(cs)})
}

// checkQueryTopic answers 400 INVALID_TOPIC unless t, a route's topic
// query parameter, is a valid non-system topic.
func (s *settings) checkQueryTopic(w http.ResponseWriter, t string) bool {
	if wire.ValidTopic(t, s.AllowNonASCIITopics) && !wire.IsSystem(t) {
		return true
	}
	writeErr(w, apiErr(http.StatusBadRequest, ReasonInvalidTopic, "query parameter topic must be a valid non-system topic"))
	return false
}

func (g *Gateway) apiSeq(w http.ResponseWriter, r *http.Request, s *settings) {
	t := r.URL.Query().Get("topic")
	if !s.checkQueryTopic(w, t) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	seq, err := g.head(ctx, t)
	if err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "the replay store is unavailable"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"seq": seq})
}

// Stats is a snapshot of a gateway, as GET /stats reports it.
type Stats struct {
	Instance    string `json:"instance"`
	Connections int    `json:"connections"`
	// SSEConnections counts the SSE streams among Connections.
	SSEConnections int     `json:"sse_connections"`
	Topics         int     `json:"topics"`
	Subscriptions  int     `json:"subscriptions"`
	UptimeSeconds  float64 `json:"uptime_seconds"`
	Draining       bool    `json:"draining"`

	// Notify is the state of each PostgreSQL NOTIFY channel (notify.go).
	Notify []NotifyStats `json:"notify,omitempty"`
}

// Stats returns the gateway's counts.
func (g *Gateway) Stats() Stats {
	conns := g.conns.all()
	subs, sse := 0, 0
	for _, c := range conns {
		subs += c.subscriptionCount()
		if c.sse != nil {
			sse++
		}
	}
	return Stats{
		Instance:       g.instanceID,
		Connections:    len(conns),
		SSEConnections: sse,
		Topics:         g.hub.topicCount(),
		Subscriptions:  subs,
		UptimeSeconds:  g.now().Sub(g.started).Seconds(),
		Draining:       g.draining.Load(),
		Notify:         g.notifyStats(),
	}
}

func (g *Gateway) apiStats(w http.ResponseWriter, r *http.Request, s *settings) {
	writeJSON(w, http.StatusOK, g.Stats())
}

// apiHealth reports the gateway's state: 200 "ok"; 200 "degraded" while
// the bus's backend or another backend is unreachable (local delivery
// still works, so a load balancer should keep the instance), with the
// unreachable ones listed; 503 "draining" during shutdown.
func (g *Gateway) apiHealth(w http.ResponseWriter, r *http.Request, s *settings) {
	status, code := "ok", http.StatusOK
	busState := "ok"
	if !g.healthy.Load() {
		status, busState = "degraded", "unreachable"
	}
	unreachable := g.ext.unreachable()
	if len(unreachable) > 0 {
		status = "degraded"
	}
	if g.draining.Load() {
		status, code = "draining", http.StatusServiceUnavailable
	}
	busHealth := map[string]any{"backend": g.busName, "state": busState}
	if c, ok := g.bus.(bus.InvalidCounter); ok {
		busHealth["invalid_envelopes"] = c.Invalid()
	}
	if c, ok := g.bus.(bus.DropCounter); ok {
		busHealth["dropped"] = c.Dropped()
	}
	writeJSON(w, code, map[string]any{
		"status":      status,
		"instance":    g.instanceID,
		"bus":         busHealth,
		"unreachable": unreachable,
	})
}
