package caddytest

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// apiResult is an HTTP API answer.
type apiResult struct {
	status int
	header http.Header
	body   string
	err    error
}

// apiDo performs an API request without failing the test, so it may run on
// another goroutine (a request waiting for a client's reply).
func apiDo(method, url, key, body string) apiResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return apiResult{err: err}
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiResult{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, header: resp.Header, body: strings.TrimSpace(string(b)), err: err}
}

// apiAsync starts an API request and returns where its answer will arrive.
func apiAsync(method, url, body string) <-chan apiResult {
	ch := make(chan apiResult, 1)
	go func() { ch <- apiDo(method, url, "", body) }()
	return ch
}

func awaitAPI(t testing.TB, ch <-chan apiResult) apiResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("api call: %v", r.err)
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("api call did not answer within 10s")
	}
	return apiResult{}
}

// wantAPIError asserts an error answer: the status, and a JSON object body
// with exactly a non-empty "error" string and the "code".
func wantAPIError(t testing.TB, what string, status int, body string, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: status %d, want %d (body %s)", what, status, wantStatus, body)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Errorf("%s: error body %q is not a JSON object: %v", what, body, err)
		return
	}
	msg, _ := m["error"].(string)
	if len(m) != 2 || msg == "" || m["code"] != wantCode {
		t.Errorf("%s: error body %s, want {\"error\":<message>,\"code\":%q}", what, body, wantCode)
	}
}

func getStats(t testing.TB, in *instance) map[string]any {
	t.Helper()
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
	if status != http.StatusOK {
		t.Fatalf("stats: %d %s", status, body)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("stats body %s: %v", body, err)
	}
	return m
}

// authSite is a handler with the API on loopback and identities from an
// auth hook (authByBearer).
func authSite(app *appHooks, extra string) string {
	return `
	realtime {
		api /_realtime
		auth ` + app.url("/auth") + `
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
` + extra + `
	}`
}

// POST /publish: one event answers {"seq":n}, a batch {"seqs":[…]}; the
// subscriber receives what was stamped; "seq":false leaves a null.
func TestAPIPublish(t *testing.T) {
	in := startCaddy(t, site)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["a","b"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"b","ref":1}`)

	if got := publish(t, in, `{"topic":"a","event":"one","data":{"k":[1,2]}}`); got != `{"seq":1}` {
		t.Fatalf("single publish answered %s, want {\"seq\":1}", got)
	}
	c.expect(`{"topic":"a","event":"one","data":{"k":[1,2]},"seq":1}`)
	got := publish(t, in, `[{"topic":"a","event":"x","data":1},{"topic":"b","event":"y","data":2},{"topic":"a","event":"z","data":3},{"topic":"b","event":"w","seq":false}]`)
	if got != `{"seqs":[2,1,3,null]}` {
		t.Fatalf("batch publish answered %s, want {\"seqs\":[2,1,3,null]}", got)
	}
	// A legacy connection gets the batch as plain envelopes, in order.
	c.expect(`{"topic":"a","event":"x","data":1,"seq":2}`)
	c.expect(`{"topic":"b","event":"y","data":2,"seq":1}`)
	c.expect(`{"topic":"a","event":"z","data":3,"seq":3}`)
	c.expect(`{"topic":"b","event":"w","data":null}`)
	if got := publish(t, in, `{"topic":"b","event":"v","seq":false}`); got != `{"seq":null}` {
		t.Fatalf("unstamped publish answered %s, want {\"seq\":null}", got)
	}
	c.expect(`{"topic":"b","event":"v","data":null}`)
	c.quiet(100 * time.Millisecond)
}

// POST /send: to every connection of a user (user_key id, identity from the
// auth hook), without seq; or to one connection id.
func TestAPISend(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { authByBearer(w, c) })
	in := startCaddy(t, authSite(app, ""))
	u1a, u1b, u2 := dialUser(t, in, "u1"), dialUser(t, in, "u1"), dialUser(t, in, "u2")
	u1a.welcome()
	u1b.welcome()
	id2 := u2.welcome()

	status, body := apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"user":"u1","topic":"dm:u1","event":"new","data":{"m":1}}`)
	if status != http.StatusOK || body != `{"delivered":2}` {
		t.Fatalf("send to u1: %d %s, want 200 {\"delivered\":2}", status, body)
	}
	for _, c := range []*wsClient{u1a, u1b} {
		c.expect(`{"topic":"dm:u1","event":"new","data":{"m":1}}`)
	}
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"connection":"`+id2+`","topic":"dm:c","event":"only","data":2}`)
	if status != http.StatusOK || body != `{"delivered":1}` {
		t.Fatalf("send to a connection: %d %s", status, body)
	}
	u2.expect(`{"topic":"dm:c","event":"only","data":2}`)
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"user":"nobody","topic":"dm","event":"e"}`)
	if status != http.StatusOK || body != `{"delivered":0}` {
		t.Fatalf("send to an absent user: %d %s", status, body)
	}
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"connection":"no-such-id","topic":"dm","event":"e"}`)
	if status != http.StatusOK || body != `{"delivered":0}` {
		t.Fatalf("send to an unknown connection: %d %s", status, body)
	}
	// Each got exactly its own frames, once.
	u1a.quiet(200 * time.Millisecond)
	u1b.quiet(10 * time.Millisecond)
	u2.quiet(10 * time.Millisecond)
}

// user_key picks the identity field that names a user; numbers count as
// their JavaScript string.
func TestAPISendUserKey(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		writeJSONAnswer(w, http.StatusOK, `{"id":"same","account":`+strings.TrimPrefix(c.Header.Get("Authorization"), "Bearer ")+`}`)
	})
	in := startCaddy(t, authSite(app, "\t\tuser_key account"))
	a := dialUser(t, in, "42")
	b := dialUser(t, in, "7")
	a.welcome()
	b.welcome()
	status, body := apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"user":"42","topic":"dm","event":"e","data":1}`)
	if status != http.StatusOK || body != `{"delivered":1}` {
		t.Fatalf("send to account 42: %d %s", status, body)
	}
	a.expect(`{"topic":"dm","event":"e","data":1}`)
	b.quiet(200 * time.Millisecond)
}

// GET /stats counts connections, topics with subscribers and
// subscriptions; GET /health is ok; GET /seq is the topic's head.
func TestAPIStatsHealthSeq(t *testing.T) {
	in := startCaddy(t, site)
	a, b := dial(t, in), dial(t, in)
	a.welcome()
	b.welcome()
	a.send(`{"type":"subscribe-batch","topics":["x","y"],"ref":1}`)
	a.expect(`{"type":"subscribed","topic":"x","ref":1}`)
	a.expect(`{"type":"subscribed","topic":"y","ref":1}`)
	b.send(`{"type":"subscribe","topic":"y","ref":1}`)
	b.expect(`{"type":"subscribed","topic":"y","ref":1}`)
	s := getStats(t, in)
	if s["connections"] != 2.0 || s["topics"] != 2.0 || s["subscriptions"] != 3.0 || s["draining"] != false {
		t.Fatalf("stats %v, want 2 connections, 2 topics, 3 subscriptions, not draining", s)
	}
	if id, _ := s["instance"].(string); id == "" {
		t.Errorf("stats has no instance id: %v", s)
	}
	a.c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, "stats after a close", func() bool {
		s := getStats(t, in)
		return s["connections"] == 1.0 && s["topics"] == 1.0 && s["subscriptions"] == 1.0
	})

	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/health"), "", "")
	var h map[string]any
	if status != http.StatusOK || json.Unmarshal([]byte(body), &h) != nil || h["status"] != "ok" {
		t.Fatalf("health: %d %s, want 200 with status ok", status, body)
	}

	seq := func(topic string) (int, string) {
		return apiCall(t, http.MethodGet, in.url("/_realtime/seq?topic="+topic), "", "")
	}
	if status, body := seq("t:1"); status != http.StatusOK || body != `{"seq":0}` {
		t.Fatalf("seq of an unpublished topic: %d %s", status, body)
	}
	for i := 0; i < 3; i++ {
		publish(t, in, `{"topic":"t:1","event":"e"}`)
	}
	publish(t, in, `{"topic":"t:1","event":"e","seq":false}`)
	if status, body := seq("t%3A1"); status != http.StatusOK || body != `{"seq":3}` {
		t.Fatalf("seq after three stamped publishes: %d %s, want {\"seq\":3}", status, body)
	}
	for _, bad := range []string{"", "__x", strings.Repeat("a", 257)} {
		status, body := seq(bad)
		wantAPIError(t, "seq?topic="+bad, status, body, http.StatusBadRequest, "INVALID_TOPIC")
	}
}

// POST /request: the client gets a request frame (refs from 1) and its
// reply is the answer; an error reply is 422, silence 504, a legacy
// connection 409 at once, an unknown one 404.
func TestAPIRequestReply(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		request_timeout 300ms
		shutdown_spread 0
	}`)
	c := dial(t, in)
	id := c.welcome()
	current(c)
	url := in.url("/_realtime/request")

	res := apiAsync(http.MethodPost, url, `{"connection":"`+id+`","event":"confirm","data":{"op":"x"}}`)
	c.expect(`{"type":"request","ref":1,"event":"confirm","data":{"op":"x"}}`)
	c.send(`{"type":"reply","ref":1,"data":{"ok":true}}`)
	if r := awaitAPI(t, res); r.status != http.StatusOK || r.body != `{"data":{"ok":true}}` {
		t.Fatalf("request answered %d %s, want 200 {\"data\":{\"ok\":true}}", r.status, r.body)
	}

	res = apiAsync(http.MethodPost, url, `{"connection":"`+id+`","event":"confirm"}`)
	c.expect(`{"type":"request","ref":2,"event":"confirm","data":null}`)
	c.send(`{"type":"reply","ref":2,"error":"no thanks"}`)
	r := awaitAPI(t, res)
	wantAPIError(t, "error reply", r.status, r.body, http.StatusUnprocessableEntity, "CLIENT_ERROR")
	if !strings.Contains(r.body, "no thanks") {
		t.Errorf("error reply answer %s does not carry the client's error", r.body)
	}

	// A string ref is accepted too (§3.3).
	res = apiAsync(http.MethodPost, url, `{"connection":"`+id+`","event":"confirm","data":3}`)
	c.expect(`{"type":"request","ref":3,"event":"confirm","data":3}`)
	c.send(`{"type":"reply","ref":"3","data":"yes"}`)
	if r := awaitAPI(t, res); r.status != http.StatusOK || r.body != `{"data":"yes"}` {
		t.Fatalf("request with string-ref reply answered %d %s", r.status, r.body)
	}

	res = apiAsync(http.MethodPost, url, `{"connection":"`+id+`","event":"confirm"}`)
	c.expect(`{"type":"request","ref":4,"event":"confirm","data":null}`)
	r = awaitAPI(t, res)
	wantAPIError(t, "unanswered request", r.status, r.body, http.StatusGatewayTimeout, "REQUEST_TIMEOUT")
	// A late reply is dropped; the connection goes on.
	c.send(`{"type":"reply","ref":4,"data":1}`)
	c.send(`{"type":"subscribe","topic":"after","ref":5}`)
	c.expect(`{"type":"subscribed","topic":"after","ref":5}`)

	// The connection closes while a request waits: 410 at once, not 504.
	gone := dial(t, in)
	gid := gone.welcome()
	current(gone)
	res = apiAsync(http.MethodPost, url, `{"connection":"`+gid+`","event":"confirm"}`)
	gone.expect(`{"type":"request","ref":1,"event":"confirm","data":null}`)
	gone.c.Close(websocket.StatusNormalClosure, "")
	r = awaitAPI(t, res)
	wantAPIError(t, "request to a connection that closed", r.status, r.body, http.StatusGone, "CONNECTION_CLOSED")

	legacy := dial(t, in)
	lid := legacy.welcome()
	r = apiDo(http.MethodPost, url, "", `{"connection":"`+lid+`","event":"confirm"}`)
	wantAPIError(t, "request to a legacy connection", r.status, r.body, http.StatusConflict, "LEGACY_CONNECTION")
	legacy.quiet(100 * time.Millisecond)

	r = apiDo(http.MethodPost, url, "", `{"connection":"no-such-connection","event":"confirm"}`)
	wantAPIError(t, "request to an unknown connection", r.status, r.body, http.StatusNotFound, "UNKNOWN_CONNECTION")
	r = apiDo(http.MethodPost, url, "", `{"connection":"`+id+`","event":"bad\"event"}`)
	wantAPIError(t, "request with an invalid event", r.status, r.body, http.StatusBadRequest, "INVALID_EVENT")
}

// POST /disconnect closes a user's connections (or one connection) with
// 4401 Unauthorized or 4403 Forbidden; other codes are refused.
func TestAPIDisconnect(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { authByBearer(w, c) })
	in := startCaddy(t, authSite(app, ""))
	u1a, u1b, u2, u3 := dialUser(t, in, "u1"), dialUser(t, in, "u1"), dialUser(t, in, "u2"), dialUser(t, in, "u3")
	u1a.welcome()
	u1b.welcome()
	u2.welcome()
	id3 := u3.welcome()
	url := in.url("/_realtime/disconnect")

	for _, body := range []string{
		`{"user":"u2","code":1000}`,
		`{"user":"u2","code":4429}`,
		`{"user":"u2","code":1008}`,
		`{"user":"u2"}`,
	} {
		status, resp := apiCall(t, http.MethodPost, url, "", body)
		wantAPIError(t, body, status, resp, http.StatusBadRequest, "BAD_CODE")
	}
	status, resp := apiCall(t, http.MethodPost, url, "", `{"user":"u2","connection":"`+id3+`","code":4401}`)
	wantAPIError(t, "user and connection", status, resp, http.StatusBadRequest, "BAD_TARGET")

	status, resp = apiCall(t, http.MethodPost, url, "", `{"user":"u1","code":4401}`)
	if status != http.StatusOK || resp != `{"closed":2}` {
		t.Fatalf("disconnect u1: %d %s", status, resp)
	}
	for _, c := range []*wsClient{u1a, u1b} {
		if code := c.closeStatus(5 * time.Second); code != 4401 {
			t.Fatalf("u1 closed with %d, want 4401", code)
		}
		var ce websocket.CloseError
		if !asClose(c.err, &ce) || ce.Reason != "Unauthorized" {
			t.Errorf("close reason %v, want Unauthorized", c.err)
		}
	}
	status, resp = apiCall(t, http.MethodPost, url, "", `{"connection":"`+id3+`","code":4403}`)
	if status != http.StatusOK || resp != `{"closed":1}` {
		t.Fatalf("disconnect a connection: %d %s", status, resp)
	}
	if code := u3.closeStatus(5 * time.Second); code != 4403 {
		t.Fatalf("u3 closed with %d, want 4403", code)
	}
	// u2 survived every refused call and the others' disconnects.
	u2.send(`{"type":"subscribe","topic":"alive","ref":1}`)
	u2.expect(`{"type":"subscribed","topic":"alive","ref":1}`)
	status, resp = apiCall(t, http.MethodPost, url, "", `{"user":"u2","code":4403}`)
	if status != http.StatusOK || resp != `{"closed":1}` {
		t.Fatalf("disconnect u2: %d %s", status, resp)
	}
	if code := u2.closeStatus(5 * time.Second); code != 4403 {
		t.Fatalf("u2 closed with %d, want 4403", code)
	}
	waitFor(t, 5*time.Second, "no connections left", func() bool { return getStats(t, in)["connections"] == 0.0 })
}

// With a key, the bearer key is required: none 401, wrong 403, right 200.
func TestAPIKey(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime {
			key s3cret
		}
		shutdown_spread 0
	}`)
	url := in.url("/_realtime/stats")
	status, body := apiCall(t, http.MethodGet, url, "", "")
	wantAPIError(t, "no key", status, body, http.StatusUnauthorized, "UNAUTHORIZED")
	status, body = apiCall(t, http.MethodGet, url, "wrong", "")
	wantAPIError(t, "wrong key", status, body, http.StatusForbidden, "FORBIDDEN")
	status, body = apiCall(t, http.MethodGet, url, "s3cret"+"x", "")
	wantAPIError(t, "key with a suffix", status, body, http.StatusForbidden, "FORBIDDEN")
	if status, body = apiCall(t, http.MethodGet, url, "s3cret", ""); status != http.StatusOK {
		t.Fatalf("right key: %d %s", status, body)
	}
	// The key guards every route, the unknown ones included.
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", `{"topic":"a","event":"e"}`)
	wantAPIError(t, "publish without key", status, body, http.StatusUnauthorized, "UNAUTHORIZED")
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "s3cret", `{"topic":"a","event":"e"}`)
	if status != http.StatusOK || body != `{"seq":1}` {
		t.Fatalf("publish with the key: %d %s", status, body)
	}
}

// nonLoopbackIPv4 returns an IPv4 address of this machine that is not a
// loopback address, or "".
func nonLoopbackIPv4() string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				return n.IP.String()
			}
		}
	}
	return ""
}

// Without a key, only loopback callers are served (the TCP peer decides).
func TestAPINonLoopbackWithoutKey(t *testing.T) {
	ip := nonLoopbackIPv4()
	if ip == "" {
		t.Skip("this machine has no non-loopback IPv4 address to call the API from")
	}
	in := startCaddy(t, site)
	req, err := http.NewRequest(http.MethodGet, "http://"+net.JoinHostPort(ip, strconv.Itoa(in.port))+"/_realtime/stats", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = in.addr() // the site address is 127.0.0.1:<port>
	req.Header.Set("X-Forwarded-For", "127.0.0.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Skipf("cannot reach Caddy on %s: %v", ip, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	wantAPIError(t, "non-loopback caller without key", resp.StatusCode, strings.TrimSpace(string(b)), http.StatusForbidden, "FORBIDDEN")
	// The loopback caller is served.
	if status, body := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", ""); status != http.StatusOK {
		t.Fatalf("loopback caller: %d %s", status, body)
	}
}

// Every failure is {"error","code"} with the right status.
func TestAPIErrors(t *testing.T) {
	in := startCaddy(t, site)
	big := `{"topic":"a","event":"e","data":"` + strings.Repeat("x", 2<<20) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"unknown route", "GET", "/nope", "", 404, "NOT_FOUND"},
		{"the bare prefix", "GET", "", "", 404, "NOT_FOUND"},
		{"a topic in the path", "POST", "/publish/chat", `{}`, 404, "NOT_FOUND"},
		{"GET publish", "GET", "/publish", "", 405, "METHOD_NOT_ALLOWED"},
		{"POST stats", "POST", "/stats", "", 405, "METHOD_NOT_ALLOWED"},
		{"DELETE seq", "DELETE", "/seq?topic=a", "", 405, "METHOD_NOT_ALLOWED"},
		{"bad json", "POST", "/publish", `{oops`, 400, "BAD_JSON"},
		{"empty body", "POST", "/publish", ``, 400, "BAD_JSON"},
		{"trailing data", "POST", "/publish", `{"topic":"a","event":"e"} {}`, 400, "BAD_JSON"},
		{"unknown field", "POST", "/publish", `{"topic":"a","event":"e","extra":1}`, 400, "BAD_JSON"},
		{"unknown field in a batch", "POST", "/publish", `[{"topic":"a","event":"e","tpoic":"b"}]`, 400, "BAD_JSON"},
		{"invalid data", "POST", "/publish", `{"topic":"a","event":"e","data":undefined}`, 400, "BAD_JSON"},
		{"missing topic", "POST", "/publish", `{"event":"e"}`, 400, "INVALID_TOPIC"},
		{"empty topic", "POST", "/publish", `{"topic":"","event":"e"}`, 400, "INVALID_TOPIC"},
		{"topic with a quote", "POST", "/publish", `{"topic":"a\"b","event":"e"}`, 400, "INVALID_TOPIC"},
		{"topic of 257", "POST", "/publish", `{"topic":"` + strings.Repeat("t", 257) + `","event":"e"}`, 400, "INVALID_TOPIC"},
		{"system topic", "POST", "/publish", `{"topic":"__presence:room","event":"e"}`, 400, "INVALID_TOPIC"},
		{"system topic in a batch", "POST", "/publish", `[{"topic":"a","event":"e"},{"topic":"__realtime","event":"e"}]`, 400, "INVALID_TOPIC"},
		{"missing event", "POST", "/publish", `{"topic":"a"}`, 400, "INVALID_EVENT"},
		{"empty event", "POST", "/publish", `{"topic":"a","event":""}`, 400, "INVALID_EVENT"},
		{"event with a control character", "POST", "/publish", `{"topic":"a","event":"e\u0001"}`, 400, "INVALID_EVENT"},
		{"event with a backslash", "POST", "/publish", `{"topic":"a","event":"e\\f"}`, 400, "INVALID_EVENT"},
		{"empty batch", "POST", "/publish", `[]`, 400, "EMPTY_BATCH"},
		{"2 MB of data", "POST", "/publish", big, 413, "PAYLOAD_TOO_LARGE"},
		{"send to a system topic", "POST", "/send", `{"user":"u","topic":"__x","event":"e"}`, 400, "INVALID_TOPIC"},
		{"send without a target", "POST", "/send", `{"topic":"a","event":"e"}`, 400, "BAD_TARGET"},
		{"send with seq", "POST", "/send", `{"user":"u","topic":"a","event":"e","seq":false}`, 400, "BAD_JSON"},
		{"send bad json", "POST", "/send", `[`, 400, "BAD_JSON"},
		{"request bad json", "POST", "/request", `{"connection":1}`, 400, "BAD_JSON"},
		{"disconnect unknown field", "POST", "/disconnect", `{"user":"u","code":4401,"why":"x"}`, 400, "BAD_JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := apiDo(tc.method, in.url("/_realtime"+tc.path), "", tc.body)
			if r.err != nil {
				t.Fatal(r.err)
			}
			wantAPIError(t, tc.method+" "+tc.path, r.status, r.body, tc.status, tc.code)
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tc.status == http.StatusMethodNotAllowed {
				want := map[string]string{"/publish": "POST", "/stats": "GET", "/seq?topic=a": "GET"}[tc.path]
				if got := r.header.Get("Allow"); got != want {
					t.Errorf("Allow %q, want %q", got, want)
				}
			}
		})
	}
	// Nothing of the refused publishes was stamped.
	if status, body := apiCall(t, http.MethodGet, in.url("/_realtime/seq?topic=a"), "", ""); status != 200 || body != `{"seq":0}` {
		t.Fatalf("seq of a after refused publishes: %d %s, want {\"seq\":0}", status, body)
	}
}

// max_body caps request bodies: a body of exactly the cap is read, one byte
// more is 413.
func TestAPIBodyLimit(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime {
			max_body 64KiB
		}
		shutdown_spread 0
	}`)
	body := func(n int) string {
		head, tail := `{"topic":"a","event":"e","data":"`, `"}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	if b := body(64 << 10); len(b) != 65536 {
		t.Fatalf("test body is %d bytes", len(b))
	}
	if status, resp := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", body(64<<10)); status != http.StatusOK {
		t.Fatalf("a body of exactly max_body: %d %s", status, resp)
	}
	status, resp := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", body(64<<10+1))
	wantAPIError(t, "body over max_body", status, resp, http.StatusRequestEntityTooLarge, "BODY_TOO_LARGE")
	status, resp = apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"user":"u","topic":"a","event":"e","data":"`+strings.Repeat("y", 1<<20)+`"}`)
	wantAPIError(t, "send body over max_body", status, resp, http.StatusRequestEntityTooLarge, "BODY_TOO_LARGE")
	if status, resp := apiCall(t, http.MethodGet, in.url("/_realtime/seq?topic=a"), "", ""); status != http.StatusOK || resp != `{"seq":1}` {
		t.Fatalf("seq after one accepted publish: %d %s", status, resp)
	}
}
