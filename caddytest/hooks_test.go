package caddytest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// appHooks plays the application behind the gateway: an httptest server in
// the test process that records every hook call, in arrival order, and
// answers through the test's function. Caddy reaches it at its 127.0.0.1 URL.
type appHooks struct {
	srv    *httptest.Server
	answer func(w http.ResponseWriter, c hookReq)

	mu    sync.Mutex
	calls []hookReq
}

// hookReq is one recorded call to the application.
type hookReq struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
	ctx    context.Context // the request's context: done when the gateway gives up
}

// newApp starts the application. Handlers that block must also watch
// c.ctx, so that stopping Caddy (registered later, so stopped first) lets
// the server close.
func newApp(t *testing.T, answer func(w http.ResponseWriter, c hookReq)) *appHooks {
	t.Helper()
	a := &appHooks{answer: answer}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c := hookReq{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body, ctx: r.Context()}
		a.mu.Lock()
		a.calls = append(a.calls, c)
		a.mu.Unlock()
		a.answer(w, c)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *appHooks) url(path string) string { return a.srv.URL + path }

// callsTo returns the calls made so far to path, in arrival order.
func (a *appHooks) callsTo(path string) []hookReq {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []hookReq
	for _, c := range a.calls {
		if c.Path == path {
			out = append(out, c)
		}
	}
	return out
}

// waitCalls waits until path has had at least n calls and returns them.
func (a *appHooks) waitCalls(t testing.TB, path string, n int) []hookReq {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("%d calls to %s", n, path), func() bool {
		return len(a.callsTo(path)) >= n
	})
	return a.callsTo(path)
}

func writeJSONAnswer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// authByBearer answers the auth hook with {"id":"<user>"} for the upgrade's
// "Authorization: Bearer <user>", and 401 without one.
func authByBearer(w http.ResponseWriter, c hookReq) bool {
	if c.Path != "/auth" {
		return false
	}
	user, ok := strings.CutPrefix(c.Header.Get("Authorization"), "Bearer ")
	if !ok || user == "" {
		writeJSONAnswer(w, http.StatusUnauthorized, `{}`)
		return true
	}
	writeJSONAnswer(w, http.StatusOK, `{"id":"`+user+`","name":"N-`+user+`"}`)
	return true
}

// dialUser connects with "Authorization: Bearer <user>" for authByBearer.
func dialUser(t testing.TB, in *instance, user string) *wsClient {
	t.Helper()
	return dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"Authorization": {"Bearer " + user}}})
}

// dialStatus attempts an upgrade on path and returns the HTTP status (101
// when it was accepted, then closed at once) and the response headers.
func dialStatus(t testing.TB, in *instance, path string, h http.Header) (int, http.Header) {
	t.Helper()
	c, resp, err := tryDial(in, dialOpts{origin: in.origin(), header: h, path: path})
	if err == nil {
		c.CloseNow()
		return resp.StatusCode, resp.Header
	}
	if resp == nil {
		t.Fatalf("upgrade on %s failed without a response: %v", path, err)
	}
	return resp.StatusCode, resp.Header
}

// current makes c a current client and waits until the gateway has seen
// the hello: the read loop is sequential, so the ack of a later subscribe
// proves it.
func current(c *wsClient) {
	c.t.Helper()
	c.send(`{"type":"hello","caps":["batch"]}`)
	c.send(`{"type":"subscribe","topic":"sync:hello","ref":"hello"}`)
	c.expect(`{"type":"subscribed","topic":"sync:hello","ref":"hello"}`)
}

type subHookBody struct {
	User       json.RawMessage `json:"user"`
	Connection string          `json:"connection"`
	Topics     []string        `json:"topics"`
}

type msgHookBody struct {
	User       json.RawMessage `json:"user"`
	Connection string          `json:"connection"`
	Binary     bool            `json:"binary"`
	Data       *string         `json:"data"`
	DataBase64 *string         `json:"data_base64"`
}

func decodeSub(t testing.TB, c hookReq) subHookBody {
	t.Helper()
	var b subHookBody
	if err := json.Unmarshal(c.Body, &b); err != nil {
		t.Fatalf("subscribe hook body %s: %v", c.Body, err)
	}
	return b
}

func decodeMsg(t testing.TB, c hookReq) msgHookBody {
	t.Helper()
	var b msgHookBody
	if err := json.Unmarshal(c.Body, &b); err != nil {
		t.Fatalf("message hook body %s: %v", c.Body, err)
	}
	return b
}

// bytes returns the frame the message hook was given.
func (b msgHookBody) bytes(t testing.TB) []byte {
	t.Helper()
	switch {
	case b.Data != nil && b.DataBase64 == nil:
		return []byte(*b.Data)
	case b.DataBase64 != nil && b.Data == nil:
		d, err := base64.StdEncoding.DecodeString(*b.DataBase64)
		if err != nil {
			t.Fatalf("data_base64 %q: %v", *b.DataBase64, err)
		}
		return d
	}
	t.Fatalf("message hook body must carry exactly one of data and data_base64: %+v", b)
	return nil
}

func (w *wsClient) sendBinary(b []byte) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageBinary, b); err != nil {
		w.t.Fatalf("write binary: %v", err)
	}
}

// The auth hook's 2xx JSON object is the connection's identity: it is the
// `user` of the subscribe and message hooks, whose `connection` is the
// welcome sessionId.
func TestHookAuthIdentity(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		switch c.Path {
		case "/auth":
			// Insignificant whitespace: the identity is the object, compacted.
			writeJSONAnswer(w, http.StatusOK, ` { "id" : "u1", "name" : "Ann", "plan" : {"tier":2} } `)
		case "/subscribe":
			writeJSONAnswer(w, http.StatusOK, `{}`)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+`
		subscribe_hook `+app.url("/subscribe")+`
		message_hook `+app.url("/message")+`
		shutdown_spread 0
	}`)
	c := dial(t, in)
	id := c.welcome()
	const identity = `{"id":"u1","name":"Ann","plan":{"tier":2}}`

	c.send(`{"type":"subscribe-batch","topics":["a","b"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"b","ref":1}`)
	sub := decodeSub(t, app.waitCalls(t, "/subscribe", 1)[0])
	if string(sub.User) != identity || sub.Connection != id {
		t.Errorf("subscribe hook got user %s connection %q, want %s and %q", sub.User, sub.Connection, identity, id)
	}

	c.send(`hello app`)
	msg := decodeMsg(t, app.waitCalls(t, "/message", 1)[0])
	if string(msg.User) != identity || msg.Connection != id {
		t.Errorf("message hook got user %s connection %q, want %s and %q", msg.User, msg.Connection, identity, id)
	}

	// Never cached across users or connections: each upgrade asks again.
	c2 := dial(t, in)
	c2.welcome()
	if n := len(app.callsTo("/auth")); n != 2 {
		t.Errorf("auth hook called %d times for two upgrades, want 2", n)
	}
}

// The auth call is a GET carrying the upgrade's credentials and context,
// like forward_auth; Set-Cookie of the answer reaches the client on the 101;
// a missing Origin is allowed once auth is configured (§2.1).
func TestHookAuthForwardsRequest(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		w.Header().Add("Set-Cookie", "session=renewed; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "theme=dark; Path=/")
		w.Header().Set("X-App-Private", "not for the client")
		writeJSONAnswer(w, http.StatusOK, `{"id":"u1"}`)
	})
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+` {
			headers X-Tenant
		}
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
	}`)

	h := http.Header{}
	h.Set("Cookie", "sid=abc; other=1")
	h.Set("Authorization", "Bearer tok-1")
	h.Set("X-Request-ID", "req-123")
	h.Set("X-Tenant", "acme")
	h.Set("X-Not-Listed", "secret")
	c, resp, err := tryDial(in, dialOpts{origin: in.origin(), header: h, path: "/ws?room=1&x=a%20b"})
	if err != nil {
		t.Fatalf("upgrade refused: %v", err)
	}
	defer c.CloseNow()
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 || got[0] != "session=renewed; Path=/; HttpOnly" || got[1] != "theme=dark; Path=/" {
		t.Errorf("Set-Cookie on the 101: %q, want both cookies of the auth answer", got)
	}
	if got := resp.Header.Get("X-App-Private"); got != "" {
		t.Errorf("an auth answer header other than Set-Cookie reached the client: %q", got)
	}

	call := app.waitCalls(t, "/auth", 1)[0]
	if call.Method != http.MethodGet {
		t.Errorf("auth hook method %s, want GET", call.Method)
	}
	for name, want := range map[string]string{
		"Cookie":          "sid=abc; other=1",
		"Authorization":   "Bearer tok-1",
		"X-Forwarded-For": "127.0.0.1",
		"X-Forwarded-Uri": "/ws?room=1&x=a%20b",
		"X-Request-Id":    "req-123",
		"X-Tenant":        "acme",
		"X-Not-Listed":    "",
	} {
		if got := call.Header.Get(name); got != want {
			t.Errorf("auth hook header %s = %q, want %q", name, got, want)
		}
	}

	// X-Request-ID outside 1–128 characters of 0x21–0x7E is replaced by a
	// fresh id; one at the 128-character limit passes through.
	valid := regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
	max := strings.Repeat("r", 128)
	seen := map[string]bool{}
	for i, sent := range []string{"bad id", strings.Repeat("r", 129), "caf\u00e9", "", max} {
		h := http.Header{}
		if sent != "" {
			h.Set("X-Request-ID", sent)
		}
		if status, _ := dialStatus(t, in, "/ws", h); status != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade with X-Request-ID %q: %d", sent, status)
		}
		got := app.waitCalls(t, "/auth", i+2)[i+1].Header.Get("X-Request-ID")
		if sent == max {
			if got != max {
				t.Errorf("a valid 128-character X-Request-ID was replaced by %q", got)
			}
			continue
		}
		if got == sent || !valid.MatchString(got) || seen[got] {
			t.Errorf("X-Request-ID %q reached the hook as %q, want a fresh valid id", sent, got)
		}
		seen[got] = true
	}

	// No Origin at all: allowed because auth is configured.
	c2, resp, err := tryDial(in, dialOpts{})
	if err != nil {
		t.Fatalf("upgrade without Origin refused although auth is configured: %v", err)
	}
	c2.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade without Origin: %d", resp.StatusCode)
	}
}

// BUG (docs/protocol.md §2.1): "X-Request-ID if 1–128 characters in 0x21–0x7E,
// else a new UUID". The replacement id must be a UUID; handlers/hooks.go
// requestID makes 16 random bytes in base64url (22 characters) instead.
func TestHookAuthReplacesBadRequestIDWithUUID(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { writeJSONAnswer(w, http.StatusOK, `{}`) })
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+`
		shutdown_spread 0
	}`)
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	for i, sent := range []string{"", "bad id"} {
		h := http.Header{}
		if sent != "" {
			h.Set("X-Request-ID", sent)
		}
		if status, _ := dialStatus(t, in, "/ws", h); status != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %d", status)
		}
		if got := app.waitCalls(t, "/auth", i+1)[i].Header.Get("X-Request-ID"); !uuid.MatchString(got) {
			t.Errorf("X-Request-ID %q was replaced by %q, want a new UUID (docs/protocol.md §2.1)", sent, got)
		}
	}
}

// BUG (docs/hooks.md, "like Caddy's forward_auth"; docs/protocol.md §2.1 client IP
// "honouring trusted proxies"): with no trusted_proxies, an X-Forwarded-For
// sent by the client itself must not reach the auth hook; forward_auth
// (reverse_proxy) sends only the client IP then. handlers/hooks.go
// authenticate prepends the client's header unconditionally
// (`xff = prior + ", " + ip`), so the app sees a spoofable first entry.
func TestHookAuthUntrustedXForwardedForIsReplaced(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { writeJSONAnswer(w, http.StatusOK, `{}`) })
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+`
		shutdown_spread 0
	}`)
	h := http.Header{}
	h.Set("X-Forwarded-For", "6.6.6.6")
	if status, _ := dialStatus(t, in, "/ws", h); status != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", status)
	}
	if got := app.waitCalls(t, "/auth", 1)[0].Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("untrusted client sent X-Forwarded-For 6.6.6.6; auth hook got %q, want %q", got, "127.0.0.1")
	}
}

// The auth answer decides the upgrade (§2.1 check 6, §9.4): 401 and other
// 4xx → 401, 403 → 403, 5xx → 503, a 2xx without a JSON object → 502, a
// hook slower than its timeout → 504.
func TestHookAuthStatusMapping(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		u, _ := url.Parse(c.Header.Get("X-Forwarded-Uri"))
		switch k := u.Query().Get("case"); k {
		case "ok":
			writeJSONAnswer(w, http.StatusOK, `{"id":"u"}`)
		case "created":
			writeJSONAnswer(w, http.StatusCreated, `{"id":"u"}`)
		case "array":
			writeJSONAnswer(w, http.StatusOK, `[1]`)
		case "null":
			writeJSONAnswer(w, http.StatusOK, `null`)
		case "string":
			writeJSONAnswer(w, http.StatusOK, `"u"`)
		case "invalid":
			writeJSONAnswer(w, http.StatusOK, `{oops`)
		case "empty":
			w.WriteHeader(http.StatusOK)
		case "nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "slow":
			select {
			case <-c.ctx.Done():
			case <-time.After(5 * time.Second):
			}
			writeJSONAnswer(w, http.StatusOK, `{"id":"u"}`)
		default: // a status code
			var code int
			fmt.Sscan(k, &code)
			writeJSONAnswer(w, code, `{"id":"u"}`)
		}
	})
	in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+` {
			timeout 300ms
		}
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
	}`)
	for _, tc := range []struct {
		name string
		want int
	}{
		{"ok", http.StatusSwitchingProtocols},
		{"created", http.StatusSwitchingProtocols},
		{"401", http.StatusUnauthorized},
		{"403", http.StatusForbidden},
		{"400", http.StatusUnauthorized},
		{"404", http.StatusUnauthorized},
		{"418", http.StatusUnauthorized},
		{"500", http.StatusServiceUnavailable},
		{"502", http.StatusServiceUnavailable},
		{"503", http.StatusServiceUnavailable},
		{"array", http.StatusBadGateway},
		{"null", http.StatusBadGateway},
		{"string", http.StatusBadGateway},
		{"invalid", http.StatusBadGateway},
		{"empty", http.StatusBadGateway},
		{"nocontent", http.StatusBadGateway},
		{"slow", http.StatusGatewayTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := dialStatus(t, in, "/ws?case="+tc.name, nil)
			if status != tc.want {
				t.Fatalf("auth answer %s: upgrade got %d, want %d", tc.name, status, tc.want)
			}
		})
	}
}

// An auth hook nobody listens on refuses upgrades with 502.
func TestHookAuthUnreachable(t *testing.T) {
	closed := freePort(t)
	in := startCaddy(t, fmt.Sprintf(`
	realtime {
		auth http://127.0.0.1:%d/auth
		shutdown_spread 0
	}`, closed))
	if status, _ := dialStatus(t, in, "/ws", nil); status != http.StatusBadGateway {
		t.Fatalf("unreachable auth hook: upgrade got %d, want 502", status)
	}
}

// §3.5, §9.10: one subscribe-hook call per subscribe-batch carrying every
// topic; true or a missing topic allows, false denies FORBIDDEN, a valid
// reason is sent verbatim, an invalid reason becomes FORBIDDEN.
func TestHookSubscribeDecisions(t *testing.T) {
	r64, r65 := strings.Repeat("R", 64), strings.Repeat("R", 65)
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		if authByBearer(w, c) {
			return
		}
		writeJSONAnswer(w, http.StatusOK, `{"ok":true,"no":false,"plan":"PLAN_LOCKED","r64":"`+r64+`","r65":"`+r65+`","quote":"A\"B","ctl":"A\tB"}`)
	})
	in := startCaddy(t, `
	realtime {
		api /_realtime
		auth `+app.url("/auth")+`
		subscribe_hook `+app.url("/subscribe")+`
		shutdown_spread 0
	}`)
	c := dialUser(t, in, "u1")
	id := c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["ok","no","plan","r64","r65","quote","ctl","missing","bad\"x"],"ref":7}`)
	// The invalid topic is denied at once, before the hook is asked.
	c.expect(`{"type":"subscribe-denied","topic":"bad\"x","ref":7,"reason":"INVALID_TOPIC"}`)
	c.expect(`{"type":"subscribed","topic":"ok","ref":7}`)
	c.expect(`{"type":"subscribe-denied","topic":"no","ref":7,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribe-denied","topic":"plan","ref":7,"reason":"PLAN_LOCKED"}`)
	c.expect(`{"type":"subscribe-denied","topic":"r64","ref":7,"reason":"` + r64 + `"}`)
	c.expect(`{"type":"subscribe-denied","topic":"r65","ref":7,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribe-denied","topic":"quote","ref":7,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribe-denied","topic":"ctl","ref":7,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribed","topic":"missing","ref":7}`)

	calls := app.callsTo("/subscribe")
	if len(calls) != 1 {
		t.Fatalf("subscribe hook called %d times for one subscribe-batch, want 1", len(calls))
	}
	if calls[0].Method != http.MethodPost {
		t.Errorf("subscribe hook method %s, want POST", calls[0].Method)
	}
	body := decodeSub(t, calls[0])
	if got := strings.Join(body.Topics, ","); got != "ok,no,plan,r64,r65,quote,ctl,missing" {
		t.Errorf("subscribe hook topics %q, want every valid topic of the batch in order", got)
	}
	if string(body.User) != `{"id":"u1","name":"N-u1"}` || body.Connection != id {
		t.Errorf("subscribe hook user %s connection %q", body.User, body.Connection)
	}

	// A single subscribe is one more call; denied topics get no delivery.
	c.send(`{"type":"subscribe","topic":"no","ref":8}`)
	c.expect(`{"type":"subscribe-denied","topic":"no","ref":8,"reason":"FORBIDDEN"}`)
	if n := len(app.callsTo("/subscribe")); n != 2 {
		t.Fatalf("subscribe hook called %d times after two subscribe frames, want 2", n)
	}
	publish(t, in, `{"topic":"no","event":"e","data":1}`)
	publish(t, in, `{"topic":"plan","event":"e","data":2}`)
	publish(t, in, `{"topic":"ok","event":"e","data":3}`)
	c.expect(`{"topic":"ok","event":"e","data":3,"seq":1}`)
	c.quiet(200 * time.Millisecond)
}

// §3.5 fail closed: a hook error, an unparsable answer or a timeout denies
// every topic of the call with INTERNAL_ERROR; the connection goes on.
func TestHookSubscribeFailClosed(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		var b subHookBody
		_ = json.Unmarshal(c.Body, &b)
		switch {
		case strings.HasPrefix(b.Topics[0], "fail"):
			writeJSONAnswer(w, http.StatusInternalServerError, `{}`)
		case strings.HasPrefix(b.Topics[0], "garbled"):
			writeJSONAnswer(w, http.StatusOK, `{"garbled:1":`)
		case strings.HasPrefix(b.Topics[0], "array"):
			writeJSONAnswer(w, http.StatusOK, `[true]`)
		case strings.HasPrefix(b.Topics[0], "slow"):
			select {
			case <-c.ctx.Done():
			case <-time.After(5 * time.Second):
			}
			writeJSONAnswer(w, http.StatusOK, `{}`)
		default:
			writeJSONAnswer(w, http.StatusOK, `{}`)
		}
	})
	in := startCaddy(t, `
	realtime {
		subscribe_hook `+app.url("/subscribe")+` {
			timeout 300ms
		}
		shutdown_spread 0
	}`)
	c := dial(t, in)
	c.welcome()
	for i, kind := range []string{"fail", "garbled", "array", "slow"} {
		c.send(fmt.Sprintf(`{"type":"subscribe-batch","topics":["%s:1","%s:2"],"ref":%d}`, kind, kind, i))
		c.expect(fmt.Sprintf(`{"type":"subscribe-denied","topic":"%s:1","ref":%d,"reason":"INTERNAL_ERROR"}`, kind, i))
		c.expect(fmt.Sprintf(`{"type":"subscribe-denied","topic":"%s:2","ref":%d,"reason":"INTERNAL_ERROR"}`, kind, i))
	}
	if n := len(app.callsTo("/subscribe")); n != 4 {
		t.Errorf("subscribe hook called %d times for four batches, want 4", n)
	}
	c.send(`{"type":"subscribe","topic":"fine","ref":9}`)
	c.expect(`{"type":"subscribed","topic":"fine","ref":9}`)
}

// `public <pattern>` topics are allowed without asking the hook; a batch
// mixing them asks only about the others.
func TestHookSubscribePublicSkipsHook(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		writeJSONAnswer(w, http.StatusOK, `{"pub:a":false,"news":false,"private":false}`)
	})
	in := startCaddy(t, `
	realtime {
		subscribe_hook `+app.url("/subscribe")+`
		public pub:* news
		shutdown_spread 0
	}`)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["pub:a","news"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"pub:a","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"news","ref":1}`)
	c.send(`{"type":"subscribe","topic":"pub:b","ref":2}`)
	c.expect(`{"type":"subscribed","topic":"pub:b","ref":2}`)
	if n := len(app.callsTo("/subscribe")); n != 0 {
		t.Fatalf("subscribe hook called %d times for public topics, want 0", n)
	}
	c.send(`{"type":"subscribe-batch","topics":["pub:c","private","newsy"],"ref":3}`)
	c.expect(`{"type":"subscribed","topic":"pub:c","ref":3}`)
	c.expect(`{"type":"subscribe-denied","topic":"private","ref":3,"reason":"FORBIDDEN"}`)
	c.expect(`{"type":"subscribed","topic":"newsy","ref":3}`)
	calls := app.callsTo("/subscribe")
	if len(calls) != 1 {
		t.Fatalf("subscribe hook called %d times, want 1", len(calls))
	}
	if got := strings.Join(decodeSub(t, calls[0]).Topics, ","); got != "private,newsy" {
		t.Errorf("subscribe hook asked about %q, want only the non-public topics private,newsy", got)
	}
}

// §4.3, §5.4: a legacy __replay:<t> subscribe asks the hook about <t>; a
// replay request for a denied topic ends with "denied":true, an allowed one
// ends plainly, both after asking the hook.
func TestHookSubscribeReplayAuthorization(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		writeJSONAnswer(w, http.StatusOK, `{"secret":false}`)
	})
	in := startCaddy(t, `
	realtime {
		subscribe_hook `+app.url("/subscribe")+`
		shutdown_spread 0
	}`)
	legacy := dial(t, in)
	legacy.welcome()
	legacy.send(`{"type":"subscribe","topic":"__replay:secret"}`)
	calls := app.waitCalls(t, "/subscribe", 1)
	if got := strings.Join(decodeSub(t, calls[0]).Topics, ","); got != "secret" {
		t.Errorf("legacy __replay:secret subscribe asked the hook about %q, want secret", got)
	}
	legacy.send(`{"type":"replay","topic":"secret","since":0}`)
	legacy.expect(`{"topic":"__replay:secret","event":"end","data":{"denied":true}}`)

	c := dial(t, in)
	c.welcome()
	current(c)
	before := len(app.callsTo("/subscribe"))
	c.send(`{"type":"replay","topic":"secret","since":0,"reqId":2}`)
	c.expect(`{"topic":"__replay:secret","event":"end","data":{"reqId":2,"denied":true}}`)
	c.send(`{"type":"replay","topic":"open","since":0,"reqId":3}`)
	c.expect(`{"topic":"__replay:open","event":"end","data":{"reqId":3}}`)
	calls = app.callsTo("/subscribe")
	if len(calls) != before+2 {
		t.Fatalf("two replay requests made %d hook calls, want 2", len(calls)-before)
	}
	for i, want := range []string{"secret", "open"} {
		if got := strings.Join(decodeSub(t, calls[before+i]).Topics, ","); got != want {
			t.Errorf("replay request %d asked the hook about %q, want %q", i, got, want)
		}
	}
	// From a current connection __replay:<t> is INVALID_TOPIC, unasked.
	c.send(`{"type":"subscribe","topic":"__replay:open","ref":4}`)
	c.expect(`{"type":"subscribe-denied","topic":"__replay:open","ref":4,"reason":"INVALID_TOPIC"}`)
	if n := len(app.callsTo("/subscribe")); n != before+2 {
		t.Errorf("a current __replay: subscribe asked the hook")
	}
}

// §3.2, §9.32: binary frames and non-control text frames reach the message
// hook byte-exact, in receipt order; control frames never do.
func TestHookMessageForwarding(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { w.WriteHeader(http.StatusNoContent) })
	in := startCaddy(t, `
	realtime {
		message_hook `+app.url("/message")+`
		shutdown_spread 0
	}`)
	c := dial(t, in)
	id := c.welcome()

	// A subscribe of exactly 8192 bytes is an application message (§3.2
	// rule 2, §7.3); one byte less is still a control frame.
	padded := func(topic string, n int) string {
		head, tail := `{"type":"subscribe","topic":"`+topic+`","ref":1,"pad":"`, `"}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	big, small := padded("big", 8192), padded("small", 8191)
	if len(big) != 8192 || len(small) != 8191 {
		t.Fatalf("padded frames of %d and %d bytes", len(big), len(small))
	}
	bin := []byte{0x00, 0xff, 0xfe, '{', '}', 0x80, 'a', '\n'}
	type frame struct {
		binary bool
		data   []byte
	}
	want := []frame{
		{true, bin},
		{false, []byte(`{"topic":"x"}`)},
		{false, []byte(`{oops`)},
		{false, []byte(big)},
		{false, []byte(` {"type":"nope","topic":"x","html":"<&>\u00e9"} `)},
		{false, []byte(`{"type":"subscribe","topic":42}`)},
		{true, []byte(`{"type":"subscribe","topic":"bin","ref":2}`)},
		{false, []byte(`"just a string"`)},
	}
	for i, f := range want {
		if f.binary {
			c.sendBinary(f.data)
		} else {
			c.send(string(f.data))
		}
		if i == 3 {
			// Control frames in between are handled, never forwarded.
			c.send(`{"type":"hello","caps":[]}`)
			c.send(small)
			c.expect(`{"type":"subscribed","topic":"small","ref":1}`)
			c.send(`{"type":"subscribe","topic":"ctl","ref":3}`)
			c.expect(`{"type":"subscribed","topic":"ctl","ref":3}`)
		}
	}
	calls := app.waitCalls(t, "/message", len(want))
	for i, call := range calls {
		if i >= len(want) {
			t.Errorf("extra message hook call %s", call.Body)
			continue
		}
		if call.Method != http.MethodPost {
			t.Errorf("message hook method %s", call.Method)
		}
		b := decodeMsg(t, call)
		if got := b.bytes(t); !bytes.Equal(got, want[i].data) {
			t.Errorf("message %d reached the hook as %q, want %q", i, got, want[i].data)
		}
		// Text goes in data, binary in data_base64, with the binary flag.
		if b.Binary != want[i].binary || (b.DataBase64 != nil) != want[i].binary {
			t.Errorf("message %d: binary=%v data=%v data_base64=%v, want binary=%v", i, b.Binary, b.Data != nil, b.DataBase64 != nil, want[i].binary)
		}
		if b.Connection != id || string(b.User) != `{}` {
			t.Errorf("message %d: connection %q user %s, want %q and {}", i, b.Connection, b.User, id)
		}
	}
	// None of the application messages subscribed anything.
	c.quiet(200 * time.Millisecond)
	c.send(`{"type":"subscribe","topic":"sync","ref":4}`)
	c.expect(`{"type":"subscribed","topic":"sync","ref":4}`)
	if n := len(app.callsTo("/message")); n != len(want) {
		t.Errorf("message hook called %d times, want %d", n, len(want))
	}
}

// The message hook's answer publishes (stamped, to the topic's
// subscribers), replies to the sender only (no seq), and may close the
// sender with 4401 or 4403.
func TestHookMessageAnswer(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		var b msgHookBody
		_ = json.Unmarshal(c.Body, &b)
		switch {
		case b.Data != nil && *b.Data == "say":
			writeJSONAnswer(w, http.StatusOK, `{"publish":[{"topic":"room","event":"said","data":{"m":1}}],"reply":{"topic":"me","event":"ack","data":1}}`)
		case b.Data != nil && *b.Data == "ban":
			writeJSONAnswer(w, http.StatusOK, `{"close":4403}`)
		case b.Data != nil && *b.Data == "odd-close":
			writeJSONAnswer(w, http.StatusOK, `{"close":1000}`)
		default:
			writeJSONAnswer(w, http.StatusOK, `{}`)
		}
	})
	in := startCaddy(t, `
	realtime {
		api /_realtime
		message_hook `+app.url("/message")+`
		shutdown_spread 0
	}`)
	sender, other := dial(t, in), dial(t, in)
	sender.welcome()
	other.welcome()
	other.send(`{"type":"subscribe","topic":"room","ref":1}`)
	other.expect(`{"type":"subscribed","topic":"room","ref":1}`)
	publish(t, in, `{"topic":"room","event":"before","data":0}`) // seq 1

	other.expect(`{"topic":"room","event":"before","data":0,"seq":1}`)
	sender.send(`say`)
	other.expect(`{"topic":"room","event":"said","data":{"m":1},"seq":2}`)
	sender.expect(`{"topic":"me","event":"ack","data":1}`)
	other.quiet(200 * time.Millisecond)
	sender.quiet(100 * time.Millisecond)

	// Only 4401 and 4403 are honoured.
	sender.send(`odd-close`)
	app.waitCalls(t, "/message", 2)
	sender.send(`{"type":"subscribe","topic":"alive","ref":2}`)
	sender.expect(`{"type":"subscribed","topic":"alive","ref":2}`)

	sender.send(`ban`)
	if code := sender.closeStatus(5 * time.Second); code != 4403 {
		t.Fatalf("close code %d after the hook answered close 4403", code)
	}
	// The other connection is unaffected.
	other.send(`{"type":"subscribe","topic":"still","ref":3}`)
	other.expect(`{"type":"subscribed","topic":"still","ref":3}`)
}

// A hung message hook blocks neither the connection's control frames nor
// other connections' messages; the connection's own messages stay in order
// behind the hung one.
func TestHookMessageSlowHookDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		var b msgHookBody
		_ = json.Unmarshal(c.Body, &b)
		if b.Data != nil && *b.Data == "hang" {
			select {
			case <-release:
			case <-c.ctx.Done():
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	in := startCaddy(t, `
	realtime {
		message_hook `+app.url("/message")+` {
			timeout 30s
		}
		shutdown_spread 0
	}`)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before Caddy stops: cleanups run last-registered first

	a, b := dial(t, in), dial(t, in)
	a.welcome()
	idB := b.welcome()
	a.send(`hang`)
	app.waitCalls(t, "/message", 1)
	a.send(`after`)

	// The hook is hung on a's message: a's subscribes are still acked…
	a.send(`{"type":"subscribe-batch","topics":["x","y"],"ref":1}`)
	a.expect(`{"type":"subscribed","topic":"x","ref":1}`)
	a.expect(`{"type":"subscribed","topic":"y","ref":1}`)
	// …and b's messages still reach the hook.
	b.send(`from b`)
	calls := app.waitCalls(t, "/message", 2)
	if m := decodeMsg(t, calls[1]); m.Data == nil || *m.Data != "from b" || m.Connection != idB {
		t.Fatalf("second hook call %s, want b's message while a's hangs", calls[1].Body)
	}
	// a's next message waits behind the hung one (receipt order).
	a.quiet(100 * time.Millisecond)
	if n := len(app.callsTo("/message")); n != 2 {
		t.Fatalf("a's second message reached the hook before its first was answered (%d calls)", n)
	}
	unblock()
	calls = app.waitCalls(t, "/message", 3)
	if m := decodeMsg(t, calls[2]); m.Data == nil || *m.Data != "after" {
		t.Fatalf("third hook call %s, want a's second message", calls[2].Body)
	}
}

// BUG: the gateway's hook client follows redirects (handlers/gateway.go
// builds http.Client without CheckRedirect), so a 3xx answer never reaches
// the `status < 200 || status >= 300` branches of handlers/hooks.go: an
// auth hook answering 302 (typically "not logged in, go to /login") grants
// the upgrade the identity of whatever JSON object the redirect target
// serves, and a subscribe hook answering 307 fails open. Caddy's
// forward_auth never follows the auth app's redirects. Expected: a 3xx is
// an invalid answer (auth 502, docs/protocol.md §2.1; subscribe INTERNAL_ERROR,
// §3.5).
func TestHookRedirectsAreNotFollowed(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		switch c.Path {
		case "/auth":
			w.Header().Set("Location", "/landing")
			w.WriteHeader(http.StatusFound)
		case "/landing":
			writeJSONAnswer(w, http.StatusOK, `{"id":"from-redirect"}`)
		case "/subscribe":
			w.Header().Set("Location", "/allow")
			w.WriteHeader(http.StatusTemporaryRedirect)
		case "/allow":
			writeJSONAnswer(w, http.StatusOK, `{}`)
		}
	})
	t.Run("auth", func(t *testing.T) {
		in := startCaddy(t, `
	realtime {
		auth `+app.url("/auth")+`
		shutdown_spread 0
	}`)
		status, _ := dialStatus(t, in, "/ws", nil)
		if status != http.StatusBadGateway {
			t.Errorf("auth hook answered 302: upgrade got %d, want 502; the redirect target was called %d times",
				status, len(app.callsTo("/landing")))
		}
	})
	t.Run("subscribe", func(t *testing.T) {
		in := startCaddy(t, `
	realtime {
		subscribe_hook `+app.url("/subscribe")+`
		shutdown_spread 0
	}`)
		c := dial(t, in)
		c.welcome()
		c.send(`{"type":"subscribe","topic":"private","ref":1}`)
		if got := c.next(3 * time.Second); got != `{"type":"subscribe-denied","topic":"private","ref":1,"reason":"INTERNAL_ERROR"}` {
			t.Errorf("subscribe hook answered 307: got %s, want INTERNAL_ERROR (the redirect target was called %d times)",
				got, len(app.callsTo("/allow")))
		}
	})
}

// A client that sends and goes away loses nothing it sent: with a slow
// message hook the messages queue, the connection closes (the client's own
// close, the rate limit's 4429, Caddy stopping), and every accepted message
// still reaches the app, in order; the frames the rate limit refused never do.
func TestHookMessagesOutliveTheirConnection(t *testing.T) {
	slow := func(w http.ResponseWriter, c hookReq) {
		select {
		case <-time.After(150 * time.Millisecond):
		case <-c.ctx.Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}
	seq := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s%d", prefix, i+1)
		}
		return out
	}

	t.Run("rate limit close", func(t *testing.T) {
		app := newApp(t, slow)
		in := startCaddy(t, rlSite(app, false, `			points 5
			interval 10s
			key connection
			action close`))
		c := dial(t, in)
		c.welcome()
		rlSendAll(c, seq("m", 6)...)
		// The sixth frame closes the connection: the last two may meet a
		// closed socket, which is the point.
		for _, m := range []string{"m7", "m8"} {
			_ = c.c.Write(context.Background(), websocket.MessageText, []byte(m))
		}
		if code := c.closeStatus(5 * time.Second); code != 4429 {
			t.Fatalf("close code %d, want 4429", code)
		}
		d := dial(t, in)
		d.welcome()
		rlWantMessages(t, app, d, false, false, seq("m", 5)...)
	})

	t.Run("client closes", func(t *testing.T) {
		app := newApp(t, slow)
		in := startCaddy(t, rlSite(app, false, `			points 100
			interval 10s`))
		c := dial(t, in)
		c.welcome()
		rlSendAll(c, seq("n", 6)...)
		c.c.Close(websocket.StatusNormalClosure, "navigating away")
		d := dial(t, in)
		d.welcome()
		rlWantMessages(t, app, d, false, false, seq("n", 6)...)
	})

	t.Run("caddy stops", func(t *testing.T) {
		app := newApp(t, slow)
		in := startCaddy(t, rlSite(app, false, `			points 100
			interval 10s`))
		c := dial(t, in)
		c.welcome()
		rlSendAll(c, seq("s", 6)...)
		// The read loop has the six once a later control frame is answered.
		c.send(`{"type":"subscribe","topic":"sync","ref":1}`)
		c.expect(`{"type":"subscribed","topic":"sync","ref":1}`)
		in.stop(20 * time.Second)
		if got := rlMessages(t, app, false); strings.Join(got, ",") != strings.Join(seq("s", 6), ",") {
			t.Fatalf("message hook got %q before Caddy exited, want s1..s6", got)
		}
	})
}
