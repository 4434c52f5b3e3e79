package caddytest

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The Grafana dashboard and the alerting rules in ops/ use only metrics and
// labels a real Caddy exposes: after traffic that touches every one of
// them, each metric the files name has samples in /metrics, and each label
// they match or group by is a label of a metric of the same expression.
func TestOpsDashboardAndAlertsUseRealMetrics(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
		message_hook http://127.0.0.1:1/unreachable
		replay chat
		sse /events
		compression
		rate_limit {
			points 1
			interval 10s
			key connection
		}
	}`)
	// Traffic: an upgrade, a subscription, a delivered publish, a message
	// whose hook is unreachable, one the rate limit drops, a replay that
	// ends truncated, and a close the gateway makes.
	c := dial(t, in)
	id := c.welcome()
	current(c)
	c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	publish(t, in, `{"topic":"chat","event":"e","data":1}`)
	c.expect(`{"topic":"chat","event":"e","data":1,"seq":1}`)
	c.send("to the hook")
	c.send("dropped by the rate limit")
	c.send(`{"type":"replay","topic":"chat","since":5,"reqId":1}`)
	c.expect(`{"topic":"__replay:chat","event":"end","data":{"reqId":1,"truncated":true}}`)
	if code, body := apiCall(t, http.MethodPost, in.url("/_realtime/disconnect"), "", `{"connection":"`+id+`","code":4403}`); code != http.StatusOK {
		t.Fatalf("disconnect: %d %s", code, body)
	}
	c.closeStatus(5 * time.Second)
	// An SSE stream held open, and an event large enough to be compressed
	// for a client that negotiated permessage-deflate.
	sse, err := http.Get(in.url("/events?topic=news"))
	if err != nil || sse.StatusCode != http.StatusOK {
		t.Fatalf("sse stream: %v %v", sse, err)
	}
	defer sse.Body.Close()
	z := dialWith(t, in, dialOpts{origin: in.origin(), compress: true})
	z.welcome()
	z.send(`{"type":"subscribe","topic":"news","ref":1}`)
	z.expect(`{"type":"subscribed","topic":"news","ref":1}`)
	big := strings.Repeat("compressible ", 50)
	publish(t, in, `{"topic":"news","event":"e","data":"`+big+`"}`)
	z.expect(`{"topic":"news","event":"e","data":"` + big + `","seq":1}`)

	var exposition map[string]map[string]bool
	waitFor(t, 10*time.Second, "every metric the ops files use", func() bool {
		exposition = sampleLabels(metricsText(t, in))
		for _, e := range opsExpressions(t) {
			for _, m := range metricNames.FindAllString(e, -1) {
				if exposition[m] == nil {
					return false
				}
			}
		}
		return true
	})
	for _, e := range opsExpressions(t) {
		names := metricNames.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("expression without a caddy_realtime metric: %s", e)
		}
		for _, label := range usedLabels(e) {
			found := false
			for _, m := range names {
				found = found || exposition[m][label]
			}
			if !found {
				t.Errorf("label %q is on none of %v in /metrics: %s", label, names, e)
			}
		}
	}
}

var metricNames = regexp.MustCompile(`caddy_realtime_[a-z_]+`)

// opsExpressions returns every PromQL expression of ops/alerts.yml and
// ops/grafana-dashboard.json.
func opsExpressions(t testing.TB) []string {
	t.Helper()
	var out []string
	rules, err := os.ReadFile("../ops/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(rules), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(line), "expr: "); ok {
			out = append(out, e)
		}
	}
	raw, err := os.ReadFile("../ops/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("ops/grafana-dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	if len(out) < 10 {
		t.Fatalf("only %d expressions in ops/", len(out))
	}
	return out
}

var (
	matchers   = regexp.MustCompile(`caddy_realtime_[a-z_]+\{([^}]*)\}`)
	matcherKey = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!=|!~|=)`)
	grouping   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// usedLabels returns the labels an expression matches on or groups by,
// less those Prometheus adds itself (instance, job) and le, which every
// histogram bucket has.
func usedLabels(e string) []string {
	var out []string
	for _, m := range matchers.FindAllStringSubmatch(e, -1) {
		for _, k := range matcherKey.FindAllStringSubmatch(m[1], -1) {
			out = append(out, k[1])
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(e, -1) {
		for _, l := range strings.Split(g[1], ",") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	kept := out[:0]
	for _, l := range out {
		if l != "" && l != "instance" && l != "job" && l != "le" {
			kept = append(kept, l)
		}
	}
	return kept
}

// sampleLabels maps each sample name of an exposition to its label names.
func sampleLabels(exposition string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	label := regexp.MustCompile(`([a-z_]+)="`)
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name = strings.Fields(name)[0]
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		for _, l := range label.FindAllStringSubmatch(rest, -1) {
			out[name][l[1]] = true
		}
	}
	return out
}
