package caddytest

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// `api /_realtime/` serves the same routes as `api /_realtime`: each
// route does its own work.
func TestAPIPathTrailingSlash(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime/
		presence room:*
		rate_limit {
			points 1
		}
	}`)
	if status, body := apiCall(t, http.MethodPost, in.url("/_realtime/ratelimit/consume"), "", `{"key":"k"}`); status != 200 || !strings.Contains(body, `"allowed":true`) {
		t.Fatalf("first consume: %d %s, want allowed", status, body)
	}
	if status, body := apiCall(t, http.MethodPost, in.url("/_realtime/ratelimit/consume"), "", `{"key":"k"}`); status != 200 || !strings.Contains(body, `"allowed":false`) {
		t.Fatalf("second consume of one point: %d %s, want refused", status, body)
	}
	if status, body := apiCall(t, http.MethodGet, in.url("/_realtime/presence/count?topic=room:1"), "", ""); status != 200 || body != `{"count":0}` {
		t.Fatalf("presence count: %d %s, want {\"count\":0}", status, body)
	}
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/nope"), "", "")
	wantAPIError(t, "GET /nope", status, body, http.StatusNotFound, "NOT_FOUND")
	status, body = apiCall(t, http.MethodGet, in.url("/_realtime/ratelimit/consume"), "", "")
	wantAPIError(t, "GET /ratelimit/consume", status, body, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
}

// `caddy validate` provisions without starting: with Redis and Postgres
// at an address that never answers it finishes at once, connecting to
// nothing and logging nothing about connections it never had.
func TestValidateWithBackendsUnreachable(t *testing.T) {
	if caddyBin == "" {
		t.Skip("needs the Caddy binary; skipped in -short mode")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	// 192.0.2.1 is TEST-NET-1: nothing answers there, a dial would hang.
	cfg := `{
	admin off
	realtime {
		redis redis://192.0.2.1:6379
		postgres postgres://app@192.0.2.1:5432/app?pool_min_conns=2
	}
}

http://127.0.0.1:1 {
	realtime {
		replay chat:* {
			store postgres
		}
		replay doc:* {
			store redis
		}
		presence room:*
		cursor canvas:*
		group lobby {
			meta topic welcome
		}
		rate_limit {
		}
		notify changes
	}
}
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"validate", "adapt"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		c := exec.CommandContext(ctx, caddyBin, cmd, "--config", path, "--adapter", "caddyfile")
		c.Env = append(os.Environ(), "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config", "HOME="+dir)
		out, err := c.CombinedOutput()
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatalf("caddy %s: %v\n%s", cmd, err, out)
		}
		if took > 2*time.Second {
			t.Errorf("caddy %s took %s, want it prompt", cmd, took)
		}
		for _, word := range []string{"redis", "postgres", "gateway", "closing", "1001"} {
			if strings.Contains(strings.ToLower(string(out)), `"logger":"`+word) || strings.Contains(string(out), "closing its connections") {
				t.Errorf("caddy %s logged about %s:\n%s", cmd, word, out)
			}
		}
	}
}

// JSON goes through the same checks as the Caddyfile: an origin with a
// path or user info, which a browser's Origin header never matches, is
// refused.
func TestJSONOriginWithPathIsRefused(t *testing.T) {
	for _, origin := range []string{"https://app.example/app", "https://user@app.example"} {
		cfg := `{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[
			{"handler":"realtime","origins":["` + origin + `"]}]}]}}}}}`
		err := caddy.Validate(mustConfig(t, cfg))
		if err == nil || !strings.Contains(err.Error(), "bad origin '"+origin+"'") {
			t.Errorf("origin %s: Validate = %v, want a bad origin error", origin, err)
		}
	}
}

func mustConfig(t *testing.T, raw string) *caddy.Config {
	t.Helper()
	cfg := new(caddy.Config)
	if err := caddy.StrictUnmarshalJSON([]byte(raw), cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}
