package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adminClient talks to an instance's admin API over its unix socket.
func adminClient(in *instance) *http.Client {
	sock := filepath.Join(in.dir, "admin.sock")
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}, Timeout: 20 * time.Second}
}

// reload loads caddyfile (a whole Caddyfile) through the admin API, as
// `caddy reload` does.
func reload(t *testing.T, in *instance, caddyfile string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://admin/load", strings.NewReader(caddyfile))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := adminClient(in).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		t.Fatalf("reload: %d %s", resp.StatusCode, b.String())
	}
	// The old config's HTTP server closes its idle keep-alive connections:
	// the API client must not reuse one (WebSockets are unaffected).
	http.DefaultClient.CloseIdleConnections()
}

func currentCaddyfile(t *testing.T, in *instance) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(in.dir, "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A reload that keeps the realtime configuration keeps every connection;
// one that changes only a non-extension option applies it to the live
// gateway, still without dropping anyone (docs/operations.md).
func TestLifecycleReloadKeepsConnections(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
		limits {
			max_subscriptions 1
		}
	}`)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["a","b"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	c.expect(`{"type":"subscribe-denied","topic":"b","ref":1,"reason":"RATE_LIMITED"}`)

	cfg := currentCaddyfile(t, in)
	if !strings.Contains(cfg, "grace_period 3s") {
		t.Fatal("the harness's Caddyfile no longer sets grace_period 3s")
	}
	// A new load whose realtime configuration is the same (Caddy skips a
	// load whose JSON did not change at all).
	reload(t, in, strings.Replace(cfg, "grace_period 3s", "grace_period 4s", 1))
	publish(t, in, `{"topic":"a","event":"after-reload","data":1}`)
	c.expect(`{"topic":"a","event":"after-reload","data":1,"seq":1}`)

	reload(t, in, strings.Replace(cfg, "max_subscriptions 1", "max_subscriptions 2", 1))
	c.send(`{"type":"subscribe","topic":"b","ref":2}`)
	c.expect(`{"type":"subscribed","topic":"b","ref":2}`)
	publish(t, in, `{"topic":"a","event":"still-here","data":2}`)
	c.expect(`{"topic":"a","event":"still-here","data":2,"seq":2}`)

	// The log says what each reload did, and that nobody was closed.
	unchanged := logLine(t, in, "reload kept the gateway unchanged")
	if unchanged["level"] != "debug" {
		t.Errorf("unchanged reload logged at %v", unchanged["level"])
	}
	applied := logLine(t, in, "reload applied new options to the live gateway; no connection closed")
	if applied["level"] != "info" || fmt.Sprint(applied["changed"]) != "[limits]" || applied["connections"] != 1.0 {
		t.Errorf("live reload logged %v, want info, changed [limits], 1 connection", applied)
	}
	if strings.Contains(in.logs.String(), "closing its connections") {
		t.Error("a reload that kept the gateway logged closing connections")
	}
}

// logLine waits for the first JSON log line of in whose msg is msg and
// returns its fields.
func logLine(t *testing.T, in *instance, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, 5*time.Second, "the log line "+msg, func() bool {
		for _, l := range strings.Split(in.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// Changing an extension's configuration starts a fresh gateway: the old
// one closes its connections with 1001 so clients reconnect and resume.
func TestLifecycleReloadWithNewExtensionsClosesWith1001(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		shutdown_spread 0
		replay chat
	}`)
	c := dial(t, in)
	id := c.welcome()
	cfg := currentCaddyfile(t, in)
	reload(t, in, strings.Replace(cfg, "replay chat", "replay chat {\n\t\t\tsize 10\n\t\t}", 1))
	if code := c.closeStatus(10 * time.Second); code != 1001 {
		t.Fatalf("close code %d, want 1001", code)
	}
	d := dial(t, in)
	d.welcome()

	// The log says how many connections the reload closed and why, then
	// names each at debug.
	replaced := logLine(t, in, "reload replaced the gateway: closing its connections with 1001 so that clients reconnect and resume")
	if replaced["level"] != "warn" || replaced["connections"] != 1.0 || replaced["reason"] != "replay rules changed" {
		t.Errorf("replacing reload logged %v, want warn, 1 connection, reason \"replay rules changed\"", replaced)
	}
	closed := logLine(t, in, "connection closed")
	if closed["connection"] != id || closed["level"] != "debug" {
		t.Errorf("closed connection logged %v, want its id %s at debug", closed, id)
	}
}

// The gateway's metrics are in Caddy's registry, served by the admin API.
func TestLifecycleMetrics(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
	}`)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe","topic":"m","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"m","ref":1}`)
	c.send(`not a control frame`) // no message hook: dropped and counted
	publish(t, in, `{"topic":"m","event":"e","data":1}`)
	c.expect(`{"topic":"m","event":"e","data":1,"seq":1}`)

	want := []string{
		`caddy_realtime_connections{gateway="/ws"} 1`,
		`caddy_realtime_subscriptions{gateway="/ws"} 1`,
		`caddy_realtime_upgrades_total{code="101",gateway="/ws"} 1`,
		`caddy_realtime_frames_in_total{gateway="/ws",kind="subscribe"} 1`,
		`caddy_realtime_dropped_total{gateway="/ws",reason="no_message_hook"} 1`,
		`caddy_realtime_published_total{gateway="/ws",source="api"} 1`,
		`caddy_realtime_publish_to_write_seconds_count{gateway="/ws"} 1`,
	}
	var body string
	waitFor(t, 5*time.Second, "metrics", func() bool {
		resp, err := adminClient(in).Get("http://admin/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		body = b.String()
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	_ = body
}

// A graceful stop removes the instance's presence entries and group
// memberships at once, with the leaves broadcast to the other instances:
// with a ttl of a minute, the leave and the lower group count must arrive
// within seconds, so they come from the stop, not from the expiry.
func TestLifecycleGracefulStopRemovesEntriesAtOnce(t *testing.T) {
	cl := startCluster(t, 2, `
	realtime {
		api /_realtime
		shutdown_spread 0
		presence room {
			ttl 60s
			heartbeat 20s
		}
		group lobby {
			member_ttl 60s
		}
	}`)
	stopping, survivor := cl.nodes[0], cl.nodes[1]
	watcher := dial(t, survivor)
	watcher.welcome()
	watcher.send(`{"type":"hello","caps":["batch"]}`)
	watcher.send(`{"type":"subscribe","topic":"__presence:room","ref":1}`)

	var leaving []string
	for i := 0; i < 3; i++ {
		w := dial(t, stopping)
		leaving = append(leaving, w.welcome())
		w.send(`{"type":"subscribe","topic":"room","ref":1}`)
		w.send(`{"type":"subscribe","topic":"__group:lobby","ref":2}`)
	}
	presenceDiffs(t, watcher, "joins", 10*time.Second, "", leaving...)
	waitFor(t, 5*time.Second, "3 lobby members seen from the survivor", func() bool {
		return getGroup(t, survivor, "lobby").Count == 3
	})

	start := time.Now()
	stopping.stop(15 * time.Second)
	presenceDiffs(t, watcher, "leaves", 5*time.Second, "", leaving...)
	waitFor(t, 5*time.Second, "the stopped instance's group memberships to disappear", func() bool {
		return getGroup(t, survivor, "lobby").Count == 0
	})
	t.Logf("leaves and group count 0 on the survivor %s after the stop began", time.Since(start).Round(10*time.Millisecond))
	if m := presenceMembers(t, survivor, "room"); len(m) != 0 {
		t.Fatalf("members left after the stop: %v", m)
	}
}
