package handlers

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/extensions/ratelimit"
)

// rateRule is the `rate_limit` directive: one limiter for application
// frames (and, optionally, subscribes), also served by the API.
type rateRule struct {
	cfg     RateLimitConfig
	limiter ratelimit.Limiter
}

func newRateRule(cfg *RateLimitConfig, b Backends, now func() time.Time) (*rateRule, error) {
	if cfg == nil {
		return nil, nil
	}
	l, err := b.rateLimit(ratelimit.Config{Points: cfg.Points, Interval: cfg.Interval, Block: cfg.Block, Now: now})
	if err != nil {
		return nil, fmt.Errorf("rate_limit: %w", err)
	}
	return &rateRule{cfg: *cfg, limiter: l}, nil
}

// rateKey names what the directive limits for c. Keys are namespaced by
// kind so the API can address them: ip:<ip>, conn:<id>, user:<value>,
// <field>:<value>. A connection without the identity field falls back to
// its connection key (session ids are unique across instances).
func (r *rateRule) rateKey(c *conn) string {
	switch r.cfg.Key {
	case "ip":
		return "ip:" + c.ip
	case "connection":
		return "conn:" + c.id
	case "user":
		if c.user != "" {
			return "user:" + c.user
		}
	default:
		if v := identityField(c.identity, r.cfg.Key); v != "" {
			return r.cfg.Key + ":" + v
		}
	}
	return "conn:" + c.id
}

// rateAllow consumes cost points for c and applies the action on excess:
// drop (counted, the client is told nothing) or close 4429.
func (c *conn) rateAllow(cost int) bool {
	r := c.g.ext.rate
	if r == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, storeTimeout)
	res, err := r.limiter.Consume(ctx, r.rateKey(c), cost)
	cancel()
	if err != nil {
		// The limiter's backend failed: the documented policy decides.
		if r.cfg.OnError != RateLimitDeny {
			return true
		}
		c.g.m.dropRate.Inc()
		return false
	}
	if res.Allowed {
		return true
	}
	c.g.m.dropRate.Inc()
	if r.cfg.Action == RateLimitClose {
		c.closeAsync(websocket.StatusCode(4429), "Rate limited")
	}
	return false
}

// apiRateLimit serves /ratelimit/consume, /reset, /ban and /unban with any
// key the app chooses, so app servers share the gateway's limiter.
func (g *Gateway) apiRateLimit(w http.ResponseWriter, r *http.Request, s *settings) {
	rule := g.ext.rate
	if rule == nil {
		writeErr(w, apiErr(http.StatusNotFound, "NO_RATE_LIMIT", "no rate_limit is configured"))
		return
	}
	body, e := readBody(r)
	if e != nil {
		writeErr(w, e)
		return
	}
	var req struct {
		Key      string `json:"key"`
		Cost     *int   `json:"cost"`
		Duration string `json:"duration"`
	}
	if e := decodeStrict(body, &req); e != nil {
		writeErr(w, e)
		return
	}
	if req.Key == "" || len(req.Key) > 512 {
		writeErr(w, apiErr(http.StatusBadRequest, "BAD_KEY", "key must be 1-512 bytes"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
	defer cancel()
	var err error
	switch r.URL.Path[len(s.APIPath):] {
	case "/ratelimit/consume":
		cost := 1
		if req.Cost != nil {
			cost = *req.Cost
		}
		if cost < 1 {
			writeErr(w, apiErr(http.StatusBadRequest, "BAD_COST", "cost must be a positive integer"))
			return
		}
		res, cerr := rule.limiter.Consume(ctx, req.Key, cost)
		if cerr != nil {
			err = cerr
			break
		}
		writeJSON(w, http.StatusOK, map[string]any{"allowed": res.Allowed, "remaining": res.Remaining, "reset_ms": res.ResetAfter.Milliseconds()})
		return
	case "/ratelimit/reset":
		err = rule.limiter.Reset(ctx, req.Key)
	case "/ratelimit/ban":
		d, perr := time.ParseDuration(req.Duration)
		if perr != nil || d <= 0 {
			writeErr(w, apiErr(http.StatusBadRequest, "BAD_DURATION", "duration must be a positive Go duration such as 30s or 5m"))
			return
		}
		err = rule.limiter.Ban(ctx, req.Key, d)
	case "/ratelimit/unban":
		err = rule.limiter.Unban(ctx, req.Key)
	}
	if err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE", "the rate limiter is unavailable"))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
