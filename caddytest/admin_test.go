package caddytest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// adminDo calls Caddy's admin endpoint and returns status and body.
func adminDo(t *testing.T, in *instance, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://admin"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient(in).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Caddy's admin endpoint serves every gateway's stats and, per gateway,
// the API's routes, without going through the public api path or its key.
func TestAdminAPIServesTheGateways(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		name chat
		shutdown_spread 0
		presence room
	}`)
	c := dial(t, in)
	id := c.welcome()
	c.send(`{"type":"subscribe","topic":"room","ref":1}`)

	code, body := adminDo(t, in, http.MethodGet, "/realtime/stats", "")
	var stats map[string]struct {
		Connections int `json:"connections"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &stats) != nil || stats["chat"].Connections != 1 {
		t.Fatalf("GET /realtime/stats: %d %s; want chat with 1 connection", code, body)
	}
	waitFor(t, 5*time.Second, "the member in the admin presence route", func() bool {
		code, body := adminDo(t, in, http.MethodGet, "/realtime/presence?topic=room", "")
		return code == http.StatusOK && strings.Contains(body, `"key":"__conn:`+id+`"`)
	})
	if code, body := adminDo(t, in, http.MethodGet, "/realtime/presence?topic=room&gateway=nope", ""); code != http.StatusNotFound || !strings.Contains(body, "chat") {
		t.Fatalf("an unknown gateway: %d %s; want 404 naming the running ones", code, body)
	}
	if code, body := adminDo(t, in, http.MethodPost, "/realtime/disconnect?gateway=chat", `{"connection":"`+id+`","code":4403}`); code != http.StatusOK {
		t.Fatalf("POST /realtime/disconnect: %d %s", code, body)
	}
	if got := c.closeStatus(5 * time.Second); got != 4403 {
		t.Fatalf("close %d after the admin disconnect, want 4403", got)
	}
}
