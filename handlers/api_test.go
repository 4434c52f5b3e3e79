package handlers

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// apiRequest sends one API request to srv and returns its status, Allow
// header and body.
func apiRequest(t *testing.T, method, url, body string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, url, ct)
	}
	return resp.StatusCode, resp.Header.Get("Allow"), strings.TrimSpace(string(b))
}

// An api path with a trailing slash serves the same routes as without:
// each route does its own work, never another's answer.
func TestAPIPathWithTrailingSlash(t *testing.T) {
	for _, prefix := range []string{"/x/", "/x", "/x//"} {
		t.Run(prefix, func(t *testing.T) {
			cfg := testConfig()
			cfg.APIPath = prefix
			cfg.RateLimit = &RateLimitConfig{Points: 2}
			cfg.Presence = []PresenceConfig{{Topics: "room:*"}}
			_, srv := newTestGateway(t, cfg)
			for i, want := range []string{`"allowed":true,"remaining":1`, `"allowed":true,"remaining":0`, `"allowed":false,"remaining":0`} {
				status, _, body := apiRequest(t, http.MethodPost, srv.URL+"/x/ratelimit/consume", `{"key":"k"}`)
				if status != http.StatusOK || !strings.Contains(body, want) {
					t.Fatalf("consume %d: %d %s, want 200 with %s", i+1, status, body, want)
				}
			}
			if status, _, body := apiRequest(t, http.MethodGet, srv.URL+"/x/presence/count?topic=room:1", ""); status != http.StatusOK || body != `{"count":0}` {
				t.Fatalf("presence count: %d %s, want 200 {\"count\":0}", status, body)
			}
			if status, _, body := apiRequest(t, http.MethodGet, srv.URL+"/x/presence?topic=room:1", ""); status != http.StatusOK || body != `{"members":[]}` {
				t.Fatalf("presence list: %d %s, want 200 {\"members\":[]}", status, body)
			}
			if status, _, body := apiRequest(t, http.MethodPost, srv.URL+"/x/publish", `{"topic":"a","event":"e"}`); status != http.StatusOK || body != `{"seq":1}` {
				t.Fatalf("publish: %d %s, want 200 {\"seq\":1}", status, body)
			}
		})
	}
}

// Unknown routes get a JSON 404; a known route asked with another method
// a JSON 405 whose Allow header lists the route's methods.
func TestAPIRoutingErrorsAreJSON(t *testing.T) {
	cfg := testConfig()
	cfg.APIPath = "/x/"
	_, srv := newTestGateway(t, cfg)
	for _, tc := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"GET", "/x", http.StatusNotFound, "NOT_FOUND", ""},
		{"GET", "/x/", http.StatusNotFound, "NOT_FOUND", ""},
		{"GET", "/x/nope", http.StatusNotFound, "NOT_FOUND", ""},
		{"POST", "/x/publish/chat", http.StatusNotFound, "NOT_FOUND", ""},
		{"POST", "/x//publish", http.StatusNotFound, "NOT_FOUND", ""},
		{"POST", "/x/a/../publish", http.StatusNotFound, "NOT_FOUND", ""},
		{"GET", "/x/publish", http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "POST"},
		{"POST", "/x/replay", http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "GET, DELETE"},
		{"DELETE", "/x/stats", http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "GET"},
	} {
		status, allow, body := apiRequest(t, tc.method, srv.URL+tc.path, "")
		if status != tc.status || allow != tc.allow || !strings.Contains(body, `"code":"`+tc.code+`"`) || !strings.Contains(body, `"error":"`) {
			t.Errorf("%s %s: %d Allow %q %s, want %d Allow %q with code %s", tc.method, tc.path, status, allow, body, tc.status, tc.allow, tc.code)
		}
	}
}
