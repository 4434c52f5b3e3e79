package handlers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// maxHookAnswer caps what the gateway reads of a hook's answer.
const maxHookAnswer = 1 << 20

// hookCall is one HTTP call to the application with its metrics.
type hookCall struct {
	g    *Gateway
	name string // auth, subscribe, message
	hook *HookConfig
}

// do performs the call; cause is the error class for metrics ("" on a
// completed exchange, whatever its status).
func (h hookCall) do(ctx context.Context, req *http.Request) (status int, body []byte, header http.Header, cause string) {
	start := time.Now()
	defer func() {
		metricHookDuration.WithLabelValues(h.g.m.name, h.name).Observe(time.Since(start).Seconds())
		if cause != "" {
			metricHookErrors.WithLabelValues(h.g.m.name, h.name, cause).Inc()
		}
	}()
	resp, err := h.g.client.Do(req.WithContext(ctx))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return 0, nil, nil, "timeout"
		}
		return 0, nil, nil, "unreachable"
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxHookAnswer+1))
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, nil, "timeout"
		}
		return 0, nil, nil, "unreachable"
	}
	if len(body) > maxHookAnswer {
		return resp.StatusCode, nil, nil, "invalid"
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		cause = "status"
	}
	return resp.StatusCode, body, resp.Header, cause
}

type authResult struct {
	identity json.RawMessage
	cookies  []string
	status   int // non-zero: refuse the upgrade with this status
	message  string
	grant    *tokenGrant // the token's topics and expiry; nil without a token
}

// authenticate calls the auth hook like Caddy's forward_auth: a GET carrying
// the upgrade's credentials (§2.1 check 6, docs/hooks.md). Results are never
// cached: each upgrade asks again.
func (g *Gateway) authenticate(r *http.Request, ip string, s *settings) authResult {
	select {
	case s.authSem <- struct{}{}:
		defer func() { <-s.authSem }()
	default:
		metricHookErrors.WithLabelValues(g.m.name, "auth", "busy").Inc()
		return authResult{status: http.StatusServiceUnavailable, message: "Too many upgrades in progress"}
	}
	ctx, cancel := context.WithTimeout(g.ctx, s.Auth.Timeout)
	defer cancel()
	req, err := http.NewRequest(http.MethodGet, s.Auth.URL, nil)
	if err != nil {
		return authResult{status: http.StatusBadGateway, message: "Authentication unavailable"}
	}
	for _, name := range append([]string{"Cookie", "Authorization", "User-Agent", "Origin"}, s.Auth.Headers...) {
		for _, v := range r.Header.Values(name) {
			req.Header.Add(name, v)
		}
	}
	// Like forward_auth: a prior X-Forwarded-For is kept only from a
	// trusted proxy, or any client could name itself.
	xff := ip
	if prior := r.Header.Get("X-Forwarded-For"); prior != "" && s.TrustedProxy(r) {
		xff = prior + ", " + ip
	}
	req.Header.Set("X-Forwarded-For", xff)
	req.Header.Set("X-Forwarded-Method", r.Method)
	req.Header.Set("X-Forwarded-Uri", r.URL.RequestURI())
	req.Header.Set("X-Forwarded-Host", r.Host)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	req.Header.Set("X-Forwarded-Proto", proto)
	req.Header.Set("X-Request-ID", requestID(r))
	req.Header.Set("Accept", "application/json")

	status, body, header, cause := hookCall{g, "auth", s.Auth}.do(ctx, req)
	switch {
	case cause == "timeout":
		return authResult{status: http.StatusGatewayTimeout, message: "Authentication timed out"}
	case cause == "unreachable" || cause == "invalid":
		return authResult{status: http.StatusBadGateway, message: "Authentication unavailable"}
	case status == http.StatusForbidden:
		return authResult{status: http.StatusForbidden, message: "Forbidden"}
	case status >= 400 && status < 500:
		return authResult{status: http.StatusUnauthorized, message: "Unauthorized"}
	case status >= 500:
		return authResult{status: http.StatusServiceUnavailable, message: "Authentication unavailable"}
	case status < 200 || status >= 300:
		metricHookErrors.WithLabelValues(g.m.name, "auth", "invalid").Inc()
		return authResult{status: http.StatusBadGateway, message: "Authentication unavailable"}
	}
	identity, ok := compactObject(body)
	if !ok {
		metricHookErrors.WithLabelValues(g.m.name, "auth", "invalid").Inc()
		g.logger.Warn("auth hook answered 2xx without a JSON object; refusing the upgrade with 502",
			zap.Int("status", status), zap.Int("body_bytes", len(body)))
		return authResult{status: http.StatusBadGateway, message: "Authentication unavailable"}
	}
	return authResult{identity: identity, cookies: header.Values("Set-Cookie")}
}

// compactObject returns b compacted if it is one JSON object.
func compactObject(b []byte) (json.RawMessage, bool) {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return nil, false
	}
	var out bytes.Buffer
	if json.Compact(&out, t) != nil {
		return nil, false
	}
	return out.Bytes(), true
}

// requestID is X-Request-ID when it is 1–128 characters in 0x21–0x7E,
// else a new id (§2.1).
func requestID(r *http.Request) string {
	id := r.Header.Get("X-Request-ID")
	ok := len(id) >= 1 && len(id) <= 128
	for i := 0; ok && i < len(id); i++ {
		ok = id[i] >= 0x21 && id[i] <= 0x7e
	}
	if ok {
		return id
	}
	return uuid.NewString()
}

// authorize decides topics (§3.5) and returns a denial reason per denied
// topic; allowed topics are absent. Topics the connection's token covers
// are allowed here; the subscribe hook decides the rest in one call, and
// without a hook they are denied FORBIDDEN. A hook error or timeout
// denies every topic it was asked about with INTERNAL_ERROR (fail closed).
func (g *Gateway) authorize(c *conn, topics []string) map[string]string {
	s := c.g.settings()
	h := s.SubscribeHook
	if c.grant != nil && c.grant.restricts {
		var rest []string
		for _, t := range topics {
			if !c.grant.covers(t) {
				rest = append(rest, t)
			}
		}
		if len(rest) == 0 {
			return nil
		}
		if h == nil {
			out := make(map[string]string, len(rest))
			for _, t := range rest {
				out[t] = ReasonForbidden
			}
			return out
		}
		topics = rest
	}
	all := func(reason string) map[string]string {
		out := make(map[string]string, len(topics))
		for _, t := range topics {
			out[t] = reason
		}
		return out
	}
	ctx, cancel := context.WithTimeout(g.ctx, h.Timeout)
	defer cancel()
	select {
	case s.subSem <- struct{}{}:
		defer func() { <-s.subSem }()
	case <-ctx.Done():
		metricHookErrors.WithLabelValues(g.m.name, "subscribe", "busy").Inc()
		return all(ReasonInternalError)
	}
	body, _ := json.Marshal(struct {
		User       json.RawMessage `json:"user"`
		Connection string          `json:"connection"`
		Topics     []string        `json:"topics"`
	}{c.identity, c.id, topics})
	req, err := http.NewRequest(http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return all(ReasonInternalError)
	}
	req.Header.Set("Content-Type", "application/json")
	status, answer, _, cause := hookCall{g, "subscribe", h}.do(ctx, req)
	if cause != "" || status < 200 || status >= 300 {
		return all(ReasonInternalError)
	}
	// An empty answer (say 204) allows every topic, as {} does; anything
	// that is not an object fails closed.
	var decisions map[string]json.RawMessage
	if t := bytes.TrimSpace(answer); len(t) > 0 {
		if t[0] != '{' || json.Unmarshal(t, &decisions) != nil {
			metricHookErrors.WithLabelValues(g.m.name, "subscribe", "invalid").Inc()
			return all(ReasonInternalError)
		}
	}
	out := make(map[string]string)
	for _, t := range topics {
		v := bytes.TrimSpace(decisions[t])
		switch {
		case len(v) == 0, string(v) == "true", string(v) == "null":
		case string(v) == "false":
			out[t] = ReasonForbidden
		case v[0] == '"':
			r, _ := wire.StringToken(v)
			if !wire.ValidReason(r) {
				r = ReasonForbidden
			}
			out[t] = r
		default:
			out[t] = ReasonForbidden // an answer we do not understand denies
		}
	}
	return out
}

// appMessage forwards an application message to the message hook, in
// receipt order, through the connection's bounded queue (§3.2, §8).
func (c *conn) appMessage(msg []byte, binary bool) {
	s := c.g.settings()
	if s.MessageHook == nil {
		c.g.m.dropNoHook.Inc()
		return
	}
	c.hookMu.Lock()
	if len(c.hookQ) >= s.MessageHook.Queue {
		c.hookMu.Unlock()
		c.g.m.dropHookQueue.Inc()
		return
	}
	c.hookQ = append(c.hookQ, appMessage{data: bytes.Clone(msg), binary: binary})
	start := !c.hookRunning
	c.hookRunning = true
	c.hookMu.Unlock()
	if start {
		c.g.wg.Add(1)
		go c.hookWorker()
	}
}

// hookWorker posts queued messages one at a time and exits when the queue
// is empty.
func (c *conn) hookWorker() {
	defer c.g.wg.Done()
	defer c.recoverPanic("message hook worker")
	for {
		c.hookMu.Lock()
		if len(c.hookQ) == 0 {
			c.hookRunning = false
			c.hookQ = nil
			c.hookMu.Unlock()
			return
		}
		m := c.hookQ[0]
		c.hookQ = c.hookQ[1:]
		c.hookMu.Unlock()
		c.postMessage(m)
	}
}

// hookAnswer is what the message hook may ask for.
type hookAnswer struct {
	Publish json.RawMessage `json:"publish"`
	Reply   *publishItem    `json:"reply"`
	Close   int             `json:"close"`
}

func (c *conn) postMessage(m appMessage) {
	s := c.g.settings()
	h := s.MessageHook
	if h == nil {
		c.g.m.dropNoHook.Inc()
		return
	}
	ctx, cancel := context.WithTimeout(c.g.posting, h.Timeout)
	defer cancel()
	select {
	case s.msgSem <- struct{}{}:
		defer func() { <-s.msgSem }()
	case <-ctx.Done():
		c.g.m.dropHookBusy.Inc()
		metricHookErrors.WithLabelValues(c.g.m.name, "message", "busy").Inc()
		return
	}
	payload := struct {
		User       json.RawMessage `json:"user"`
		Connection string          `json:"connection"`
		Binary     bool            `json:"binary"`
		Data       *string         `json:"data,omitempty"`
		DataBase64 *string         `json:"data_base64,omitempty"`
	}{User: c.identity, Connection: c.id, Binary: m.binary}
	if !m.binary && utf8.Valid(m.data) {
		d := string(m.data)
		payload.Data = &d
	} else {
		d := base64.StdEncoding.EncodeToString(m.data)
		payload.DataBase64 = &d
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false) // the app gets the client's bytes, not an HTML-safe rewrite
	_ = enc.Encode(payload)
	req, err := http.NewRequest(http.MethodPost, h.URL, &body)
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	status, answer, _, cause := hookCall{c.g, "message", h}.do(ctx, req)
	if cause != "" || status < 200 || status >= 300 || len(bytes.TrimSpace(answer)) == 0 {
		return
	}
	var a hookAnswer
	if err := json.Unmarshal(answer, &a); err != nil {
		metricHookErrors.WithLabelValues(c.g.m.name, "message", "invalid").Inc()
		return
	}
	if len(a.Publish) > 0 && string(a.Publish) != "null" {
		msgs, unstamped, apiErr := parsePublish(a.Publish, s)
		if apiErr != nil {
			metricHookErrors.WithLabelValues(c.g.m.name, "message", "invalid").Inc()
			c.g.logger.Warn("message hook asked for an invalid publish; ignored", zap.String("error", apiErr.Message))
		} else {
			_ = c.g.publish(ctx, msgs, unstamped, "hook") // logged inside
		}
	}
	if a.Reply != nil {
		if m, apiErr := a.Reply.message(s, true); apiErr == nil {
			c.send(wire.AppendEnvelope(nil, m.Topic, m.Event, m.Data, 0))
		} else {
			metricHookErrors.WithLabelValues(c.g.m.name, "message", "invalid").Inc()
		}
	}
	if a.Close == 4401 || a.Close == 4403 {
		code, reason := a.Close, "Unauthorized"
		if code == 4403 {
			reason = "Forbidden"
		}
		c.closeAsync(websocket.StatusCode(code), reason)
	}
}

// deliverRemote delivers messages another instance published. It runs on
// the bus's goroutine and must not block: the hub only enqueues, and
// events of shared replay stores go through the ordered path, whose fills
// run on goroutines of their own (order.go).
func (g *Gateway) deliverRemote(msgs []bus.Message) {
	g.m.busUnits.Inc()
	g.m.busMessages.Add(float64(len(msgs)))
	now := g.now()
	var topics []bus.Message
	for i := range msgs {
		m := &msgs[i]
		if wire.IsSystem(m.Topic) {
			g.deliverSystem(*m)
			continue
		}
		if m.User != "" {
			g.sendUser(m.User, wire.AppendEnvelope(nil, m.Topic, m.Event, m.Data, 0))
			continue
		}
		if r := g.orderedRule(m.Topic); r != nil && m.Seq > 0 {
			g.m.published("bus", 1)
			g.deliverOrdered(r, m, now)
			continue
		}
		topics = append(topics, *m)
	}
	if len(topics) > 0 {
		g.m.published("bus", len(topics))
		_, _ = g.hub.publish(topics, false, nil, now) // no stamping: cannot fail
	}
}

// deliverSystem delivers a gateway frame relayed by another instance to
// this instance's recipients: attached cursor connections, or group
// members (all, or those of a role). It returns how many connections it
// reached.
func (g *Gateway) deliverSystem(m bus.Message) int {
	frame := wire.AppendEnvelope(nil, m.Topic, m.Event, m.Data, 0)
	switch prefix, inner := splitSystem(m.Topic); prefix {
	case wire.CursorPrefix:
		g.cursorDeliverLocal(inner, frame)
	case wire.GroupPrefix:
		gr := g.ext.groups[inner]
		if gr == nil {
			return 0
		}
		role := ""
		if len(m.User) > len("role:") && m.User[:len("role:")] == "role:" {
			role = m.User[len("role:"):]
		}
		gr.mu.Lock()
		defer gr.mu.Unlock()
		n := 0
		for c, r := range gr.members {
			if (role == "" || string(r) == role) && c.send(frame) {
				n++
			}
		}
		if m.Event == "close" {
			clear(gr.members) // closed everywhere: membership ends here too
		}
		return n
	}
	return 0
}
