package handlers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// isUpgrade reports whether r asks for a WebSocket (check 1 of §2.1): a GET
// whose Upgrade header names websocket. Anything else is not ours.
func isUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// validHandshake checks the rest of RFC 6455 §4.2.1 before any other check
// runs, so a malformed handshake gets 400 whatever else is wrong.
func validHandshake(r *http.Request) bool {
	if r.ProtoMajor != 1 || !headerHasToken(r.Header, "Connection", "upgrade") {
		return false
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		return false
	}
	key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key"))
	return err == nil && len(key) == 16
}

func refuse(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}

// admit runs the checks a WebSocket upgrade and an SSE stream share, in
// the order of §2.1: draining, max_connections, then the client address's
// upgrade_rate (refused with rateMsg). It returns the client address, or
// the status and message of the refusal with Retry-After set on w.
func (g *Gateway) admit(w http.ResponseWriter, r *http.Request, s *settings, rateMsg string) (ip string, status int, msg string) {
	if g.draining.Load() {
		w.Header().Set("Retry-After", "5")
		return "", http.StatusServiceUnavailable, "Server shutting down"
	}
	if s.MaxConnections > 0 && g.conns.count() >= s.MaxConnections {
		w.Header().Set("Retry-After", "5")
		return "", http.StatusServiceUnavailable, "Too many connections"
	}
	ip = s.ClientIP(r)
	if s.UpgradeRate > 0 {
		if wait, ok := g.upgrades.allow(ip, s.Now(), s.UpgradeRate, s.UpgradeWindow); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			return "", http.StatusTooManyRequests, rateMsg
		}
	}
	return ip, 0, ""
}

// admitIdentity makes the identity of an upgrade or an SSE stream: "{}"
// without auth and jwt, else the token's or the auth hook's, whose
// Set-Cookie headers go on w. A refusal comes back as its status and
// message.
func (g *Gateway) admitIdentity(w http.ResponseWriter, r *http.Request, ip string, s *settings) (json.RawMessage, *tokenGrant, int, string) {
	if s.Auth == nil && s.JWT == nil {
		return json.RawMessage("{}"), nil, 0, ""
	}
	res := g.identify(r, ip, s)
	if res.status != 0 {
		return nil, nil, res.status, res.message
	}
	// Close may have begun while the hook ran (up to its timeout): a
	// connection accepted now would miss Close's 1001 and be dropped
	// without a close frame (TestGatewayCloseRefusesUpgradesWaitingForAuth).
	if g.draining.Load() {
		w.Header().Set("Retry-After", "5")
		return nil, nil, http.StatusServiceUnavailable, "Server shutting down"
	}
	for _, c := range res.cookies {
		w.Header().Add("Set-Cookie", c)
	}
	return res.identity, res.grant, 0, ""
}

// serveUpgrade runs the upgrade checks of §2.1 in order, then accepts.
func (g *Gateway) serveUpgrade(w http.ResponseWriter, r *http.Request, s *settings) {
	code := "101"
	defer func() { g.m.upgrade(code) }()
	fail := func(status int, msg string) {
		code = strconv.Itoa(status)
		refuse(w, status, msg)
	}
	if !validHandshake(r) {
		fail(http.StatusBadRequest, "Bad WebSocket handshake")
		return
	}
	ip, status, msg := g.admit(w, r, s, "Too many upgrades")
	if status != 0 {
		fail(status, msg)
		return
	}
	if !s.originAllowed(r) {
		fail(http.StatusForbidden, "Origin not allowed")
		return
	}
	identity, grant, status, msg := g.admitIdentity(w, r, ip, s)
	if status != 0 {
		fail(status, msg)
		return
	}
	c := &conn{g: g, id: uuid.NewString(), ip: ip, identity: identity, grant: grant}
	alive := func() { c.lastRead.Store(time.Now().UnixNano()) }
	hw := &smallHijacker{ResponseWriter: w}
	opts := &websocket.AcceptOptions{
		InsecureSkipVerify: true, // the origin policy above already ran, with our own rules
		OnPongReceived:     func(context.Context, []byte) { alive() },
		OnPingReceived:     func(context.Context, []byte) bool { alive(); return true },
	}
	if s.deflate != nil {
		// No context takeover either way: one compressed frame serves
		// every subscriber (deflate.go), and no connection holds a
		// compression window. The library inflates what clients send;
		// the read limit applies to the inflated message.
		opts.CompressionMode = websocket.CompressionNoContextTakeover
		opts.CompressionThreshold = s.deflate.minSize
	}
	ws, err := websocket.Accept(hw, r, opts)
	if err != nil {
		// Accept has written the response itself.
		code = "accept_error"
		g.logger.Debug("websocket accept failed", zap.String("remote_ip", ip), zap.Error(err))
		return
	}
	ws.SetReadLimit(s.MaxPayload)
	c.ws, c.cork = ws, hw.cork
	if s.deflate != nil && strings.HasPrefix(w.Header().Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		c.deflate = s.deflate
	}
	g.start(c, s)
}

// start registers an accepted socket, sends welcome and runs its read loop
// on a fresh goroutine, letting the request goroutine (and its deep stack)
// end.
func (g *Gateway) start(c *conn, s *settings) {
	if !g.register(c, s) {
		_ = c.ws.Close(websocket.StatusGoingAway, "Server shutting down")
		return
	}
	go c.readLoop()
}

// register adds an opened connection to the gateway, counting its read
// loop (or SSE request) in g.wg, queues its welcome and arms its token's
// expiry. It reports false, registering nothing, once Close has begun.
func (g *Gateway) register(c *conn, s *settings) bool {
	c.user = userOf(c.identity, s.UserKey)
	now := s.Now().UnixNano()
	c.lastRead.Store(now)
	c.lastWrite.Store(now)
	c.lastPing = now
	// Under lifeMu so Close either sees this connection or refuses it:
	// nothing is accepted after Close took its snapshot.
	g.lifeMu.RLock()
	if g.draining.Load() {
		g.lifeMu.RUnlock()
		return false
	}
	g.wg.Add(1)
	// Queued before the connection can be found (a health event, a send
	// by user), so welcome is its first frame (§2.3).
	c.send(wire.Welcome(c.id))
	g.conns.add(c)
	g.m.connections.Inc()
	if c.sse != nil {
		g.m.sseConnections.Inc()
	}
	g.lifeMu.RUnlock()
	c.armExpiry(s.Now())
	return true
}

// userOf returns String(identity[key]) as JavaScript would print it, for
// strings and numbers; other kinds name no user.
func userOf(identity json.RawMessage, key string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(identity, &m) != nil {
		return ""
	}
	v := m[key]
	if len(v) == 0 {
		return ""
	}
	if v[0] == '"' {
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s
		}
		return ""
	}
	if f, err := strconv.ParseFloat(string(v), 64); err == nil {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return ""
}

// originAllowed applies the origin policy (§2.1).
func (s *settings) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return s.Auth != nil || s.JWT != nil
	}
	if s.anyOrigin {
		return true
	}
	if s.origins[strings.ToLower(origin)] {
		return true
	}
	if !s.sameOrigin {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return strings.EqualFold(u.Scheme, scheme) && strings.EqualFold(hostWithPort(u.Host, u.Scheme), hostWithPort(r.Host, scheme))
}

// hostWithPort makes the default port explicit so "example.com" and
// "example.com:443" compare equal under https.
func hostWithPort(host, scheme string) string {
	if strings.LastIndexByte(host, ':') > strings.LastIndexByte(host, ']') {
		return host
	}
	if strings.EqualFold(scheme, "https") {
		return host + ":443"
	}
	return host + ":80"
}

// ipWindow is the per-IP sliding-window upgrade limiter (§2.1 check 4):
// each IP keeps the times of its recent upgrades, at most rate of them.
type ipWindow struct {
	mu   sync.Mutex
	hits map[string][]time.Time
}

func newIPWindow() *ipWindow { return &ipWindow{hits: make(map[string][]time.Time)} }

// allow records an upgrade from ip at now, or reports how long until the
// oldest upgrade in the window leaves it.
func (w *ipWindow) allow(ip string, now time.Time, rate int, window time.Duration) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.hits[ip]
	i := 0
	for i < len(h) && now.Sub(h[i]) >= window {
		i++
	}
	h = h[i:]
	if len(h) >= rate {
		w.hits[ip] = h
		return h[0].Add(window).Sub(now), false
	}
	w.hits[ip] = append(h, now)
	return 0, true
}

// trim forgets IPs whose upgrades all left the window.
func (w *ipWindow) trim(now time.Time, window time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ip, h := range w.hits {
		if len(h) == 0 || now.Sub(h[len(h)-1]) >= window {
			delete(w.hits, ip)
		}
	}
}
