package handlers

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

var metricPreflights = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "realtime", Name: "auth_preflights_total",
	Help: "Auth preflights answered, by status.",
}, []string{"gateway", "code"})

func init() { allMetrics = append(allMetrics, metricPreflights) }

// servePreflight answers the current client's auth preflight (§2.2) with
// the decision its upgrade would get from the token or the auth hook: 204
// (with the hook's Set-Cookie headers), 401 or 403 on a refusal, which
// the client takes as final, and a 5xx on an outage or overload, after
// which it retries with backoff. It never answers another 4xx, 429
// included: that would stop the client until the page reloads.
func (g *Gateway) servePreflight(w http.ResponseWriter, r *http.Request, s *settings) {
	code := http.StatusNoContent
	defer func() { metricPreflights.WithLabelValues(g.m.name, strconv.Itoa(code)).Inc() }()
	w.Header().Set("Cache-Control", "no-store")
	fail := func(status int, msg string) {
		code = status
		refuse(w, status, msg)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	if g.draining.Load() {
		w.Header().Set("Retry-After", "5")
		fail(http.StatusServiceUnavailable, "Server shutting down")
		return
	}
	if r.Header.Get("Origin") != "" && !s.originAllowed(r) {
		fail(http.StatusForbidden, "Origin not allowed")
		return
	}
	if !csrfEvidence(r, s) {
		fail(http.StatusForbidden, "Cross-site request refused")
		return
	}
	res := g.identify(r, s.ClientIP(r), s)
	if res.status != 0 {
		fail(res.status, res.message)
		return
	}
	for _, c := range res.cookies {
		w.Header().Add("Set-Cookie", c)
	}
	w.WriteHeader(code)
}

// csrfEvidence reports whether a preflight shows it comes from a page of
// the site (§2.2): a custom X-Requested-With header, which a cross-site
// form cannot send; an Origin the policy names (same-origin or listed, not
// the "*" that allows every site); or Sec-Fetch-Site: same-origin.
func csrfEvidence(r *http.Request, s *settings) bool {
	xrw := r.Header.Get("X-Requested-With")
	if strings.EqualFold(xrw, "svelte-adapter-uws") || strings.EqualFold(xrw, "XMLHttpRequest") {
		return true
	}
	if r.Header.Get("Origin") != "" && !s.anyOrigin && s.originAllowed(r) {
		return true
	}
	return r.Header.Get("Sec-Fetch-Site") == "same-origin"
}
