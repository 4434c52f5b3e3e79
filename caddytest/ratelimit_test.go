package caddytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Integration tests of the `rate_limit` directive (application frames,
// optionally subscribes, per ip, connection, user or identity field, drop
// or close 4429, block) and of the /ratelimit API.

// rlApp is an application whose message hook answers 204 (and whose auth
// hook, if used, is authByBearer). Its calls are recorded by newApp.
func rlApp(t *testing.T) *appHooks {
	return newApp(t, func(w http.ResponseWriter, c hookReq) {
		if authByBearer(w, c) {
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// rlSite is a handler with the API on loopback, the app's message hook, no
// upgrade rate limit and the given rate_limit block body; auth adds the
// app's auth hook.
func rlSite(app *appHooks, auth bool, rateLimit string) string {
	a := ""
	if auth {
		a = "\t\tauth " + app.url("/auth") + "\n"
	}
	return `
	realtime {
		api /_realtime
		shutdown_spread 0
		message_hook ` + app.url("/message") + `
` + a + `		limits {
			upgrade_rate off
		}
		rate_limit {
` + rateLimit + `
		}
	}`
}

// rlMessages returns the data of the message hook calls so far, in order,
// as "<connection>:<data>" when withConn is set.
func rlMessages(t *testing.T, app *appHooks, withConn bool) []string {
	t.Helper()
	var out []string
	for _, c := range app.callsTo("/message") {
		b := decodeMsg(t, c)
		d := string(b.bytes(t))
		if withConn {
			d = b.Connection + ":" + d
		}
		out = append(out, d)
	}
	return out
}

// rlWantMessages waits for the message hook calls to be exactly want (in
// order, or as a set when sorted is set), then checks that no further call
// comes within a quiet window on c.
func rlWantMessages(t *testing.T, app *appHooks, c *wsClient, withConn, sorted bool, want ...string) {
	t.Helper()
	app.waitCalls(t, "/message", len(want))
	c.quiet(300 * time.Millisecond)
	got := rlMessages(t, app, withConn)
	if sorted {
		sort.Strings(got)
		want = append([]string(nil), want...)
		sort.Strings(want)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("message hook got %q, want %q", got, want)
	}
}

// rlSendAll sends each text frame on c.
func rlSendAll(c *wsClient, frames ...string) {
	c.t.Helper()
	for _, f := range frames {
		c.send(f)
	}
}

// rlResult is a /ratelimit/consume answer.
type rlResult struct {
	Allowed   bool  `json:"allowed"`
	Remaining int   `json:"remaining"`
	ResetMS   int64 `json:"reset_ms"`
}

// rlPost calls POST /_realtime/ratelimit/<route> with body.
func rlPost(t *testing.T, in *instance, route, body string) (int, string) {
	t.Helper()
	return apiCall(t, http.MethodPost, in.url("/_realtime/ratelimit/"+route), "", body)
}

// rlConsume calls /ratelimit/consume and checks the answer has exactly
// allowed, remaining and reset_ms.
func rlConsume(t *testing.T, in *instance, body string) rlResult {
	t.Helper()
	status, resp := rlPost(t, in, "consume", body)
	if status != http.StatusOK {
		t.Fatalf("consume %s: %d %s", body, status, resp)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(resp), &m); err != nil || len(m) != 3 || m["allowed"] == nil || m["remaining"] == nil || m["reset_ms"] == nil {
		t.Fatalf("consume %s answered %s, want exactly allowed, remaining and reset_ms", body, resp)
	}
	var r rlResult
	if err := json.Unmarshal([]byte(resp), &r); err != nil {
		t.Fatalf("consume %s answered %s: %v", body, resp, err)
	}
	return r
}

// rlOK calls a /ratelimit route that answers {} on success.
func rlOK(t *testing.T, in *instance, route, body string) {
	t.Helper()
	if status, resp := rlPost(t, in, route, body); status != http.StatusOK || resp != `{}` {
		t.Fatalf("%s %s: %d %s, want 200 {}", route, body, status, resp)
	}
}

// `rate_limit { points 5 interval 10s }` (key ip, action drop): 5
// application messages reach the message hook, later ones are dropped
// silently; control frames are not counted.
func TestRateLimitDropsApplicationMessages(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 5
			interval 10s`))
	c := dial(t, in)
	c.welcome()
	// Ten subscribes first: control frames spend nothing.
	for i := 0; i < 10; i++ {
		c.send(fmt.Sprintf(`{"type":"subscribe","topic":"t%d","ref":%d}`, i, i))
		c.expect(fmt.Sprintf(`{"type":"subscribed","topic":"t%d","ref":%d}`, i, i))
	}
	c.send(`{"type":"hello","caps":["batch"]}`)
	rlSendAll(c, "m1", `{"topic":"x"}`, "m3", "m4")
	c.sendBinary([]byte{0x00, 'b'})
	rlSendAll(c, "m6", "m7", `{"oops`)
	c.sendBinary([]byte("b9"))
	rlWantMessages(t, app, c, false, false, "m1", `{"topic":"x"}`, "m3", "m4", "\x00b")
	// Still no control frame is refused, and the client is told nothing.
	c.send(`{"type":"subscribe-batch","topics":["u1","u2"],"ref":"after"}`)
	rpExpectAll(c, `{"type":"subscribed","topic":"u1","ref":"after"}`, `{"type":"subscribed","topic":"u2","ref":"after"}`)
	c.send(`{"type":"replay","topic":"u1","since":0,"reqId":1}`)
	c.expect(`{"topic":"__replay:u1","event":"end","data":{"reqId":1}}`)
	c.send(`{"type":"unsubscribe","topic":"u1"}`)
	publish(t, in, `{"topic":"u2","event":"e","data":1}`)
	c.expect(`{"topic":"u2","event":"e","data":1,"seq":1}`)
	// The directive's key is ip:<client ip>, with no points left.
	if r := rlConsume(t, in, `{"key":"ip:127.0.0.1"}`); r.Allowed || r.Remaining != 0 || r.ResetMS <= 0 || r.ResetMS > 10000 {
		t.Fatalf("consume ip:127.0.0.1 after 5 messages: %+v, want refused, 0 remaining, reset within 10s", r)
	}
	c.send("m10")
	c.quiet(300 * time.Millisecond)
	if n := len(app.callsTo("/message")); n != 5 {
		t.Fatalf("message hook called %d times, want 5", n)
	}
}

// Without a block, a key refills: once the interval has passed, frames
// pass again.
func TestRateLimitRefills(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 2
			interval 300ms`))
	c := dial(t, in)
	c.welcome()
	start := time.Now()
	rlSendAll(c, "a", "b", "c")
	rlWantMessages(t, app, c, false, false, "a", "b")
	i := 0
	waitFor(t, 5*time.Second, "a message to pass after the refill", func() bool {
		if len(app.callsTo("/message")) > 2 {
			return true
		}
		i++
		if i%5 == 1 { // one frame per 50 ms
			c.send(fmt.Sprintf("r%d", i))
		}
		return false
	})
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("a message passed %s after exhausting 2 points per 300ms", el)
	}
}

// `subscribes`: subscribe and subscribe-batch spend one point per topic; a
// frame beyond the points gets RATE_LIMITED for every topic (nothing for a
// subscribe without ref), and spends nothing.
func TestRateLimitSubscribes(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 5
			interval 10s
			subscribes`))
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"hello","caps":["batch"]}`)
	c.send(`{"type":"subscribe-batch","topics":["a","b","c"],"ref":1}`)
	rpExpectAll(c,
		`{"type":"subscribed","topic":"a","ref":1}`,
		`{"type":"subscribed","topic":"b","ref":1}`,
		`{"type":"subscribed","topic":"c","ref":1}`)
	c.send(`{"type":"subscribe-batch","topics":["d","e","f"],"ref":2}`)
	rpExpectAll(c,
		`{"type":"subscribe-denied","topic":"d","ref":2,"reason":"RATE_LIMITED"}`,
		`{"type":"subscribe-denied","topic":"e","ref":2,"reason":"RATE_LIMITED"}`,
		`{"type":"subscribe-denied","topic":"f","ref":2,"reason":"RATE_LIMITED"}`)
	// The refused batch spent nothing: 2 points are left.
	c.send(`{"type":"subscribe","topic":"d","ref":3}`)
	c.expect(`{"type":"subscribed","topic":"d","ref":3}`)
	// Application messages share the points: one left.
	rlSendAll(c, "m1", "m2")
	rlWantMessages(t, app, c, false, false, "m1")
	c.send(`{"type":"subscribe","topic":"e","ref":4}`)
	c.expect(`{"type":"subscribe-denied","topic":"e","ref":4,"reason":"RATE_LIMITED"}`)
	c.send(`{"type":"subscribe","topic":"e"}`)
	c.quiet(300 * time.Millisecond)
	// Denied topics were not subscribed; granted ones were.
	publish(t, in, `[{"topic":"e","event":"x","data":1},{"topic":"f","event":"x","data":2},{"topic":"a","event":"x","data":3}]`)
	c.expect(`{"topic":"a","event":"x","data":3,"seq":1}`)
	c.quiet(200 * time.Millisecond)
}

// `action close`: the first excess frame closes the connection with 4429
// "Rate limited"; the frames within the points were forwarded.
func TestRateLimitActionClose(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 2
			interval 10s
			action close`))
	c := dial(t, in)
	c.welcome()
	rlSendAll(c, "a", "b")
	app.waitCalls(t, "/message", 2)
	c.send(`{"type":"subscribe","topic":"t","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	c.send("c")
	if code := c.closeStatus(5 * time.Second); code != 4429 {
		t.Fatalf("close code %d, want 4429", code)
	}
	var ce websocket.CloseError
	if !asClose(c.err, &ce) || ce.Reason != "Rate limited" {
		t.Fatalf("close %v, want reason Rate limited", c.err)
	}
	if got := rlMessages(t, app, false); strings.Join(got, ",") != "a,b" {
		t.Fatalf("message hook got %q, want a and b", got)
	}
	// Another connection from the same IP (key ip) closes on its first
	// application frame.
	d := dial(t, in)
	d.welcome()
	d.send(`{"type":"subscribe","topic":"t","ref":1}`)
	d.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	d.send("d")
	if code := d.closeStatus(5 * time.Second); code != 4429 {
		t.Fatalf("second connection: close code %d, want 4429", code)
	}
}

// `key connection` limits each connection on its own, under the key
// conn:<connection id>.
func TestRateLimitKeyConnection(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 2
			interval 10s
			key connection`))
	a, b := dial(t, in), dial(t, in)
	aID, bID := a.welcome(), b.welcome()
	rlSendAll(a, "a1", "a2", "a3")
	rlSendAll(b, "b1", "b2", "b3")
	rlWantMessages(t, app, a, true, true, aID+":a1", aID+":a2", bID+":b1", bID+":b2")
	for _, key := range []string{"conn:" + aID, "conn:" + bID} {
		if r := rlConsume(t, in, `{"key":"`+key+`"}`); r.Allowed {
			t.Errorf("consume %s after its 2 messages: %+v, want refused", key, r)
		}
	}
	if r := rlConsume(t, in, `{"key":"ip:127.0.0.1"}`); !r.Allowed || r.Remaining != 1 {
		t.Errorf("consume ip:127.0.0.1 under key connection: %+v, want untouched (allowed, 1 remaining)", r)
	}
	// A new connection has its own points.
	c := dial(t, in)
	cID := c.welcome()
	c.send("c1")
	app.waitCalls(t, "/message", 5)
	if got := rlMessages(t, app, true)[4]; got != cID+":c1" {
		t.Fatalf("fifth message %q, want %s:c1", got, cID)
	}
	// The API can ban that connection by its key.
	rlOK(t, in, "ban", `{"key":"conn:`+cID+`","duration":"1m"}`)
	c.send("c2")
	c.quiet(300 * time.Millisecond)
	if n := len(app.callsTo("/message")); n != 5 {
		t.Fatalf("message hook called %d times after banning conn:%s, want 5", n, cID)
	}
	rlOK(t, in, "unban", `{"key":"conn:`+cID+`"}`)
	c.send("c3")
	app.waitCalls(t, "/message", 6)
	if got := rlMessages(t, app, true)[5]; got != cID+":c3" {
		t.Fatalf("sixth message %q, want %s:c3", got, cID)
	}
}

// `key ip` (the default) shares the points of every connection from one IP.
func TestRateLimitKeyIPSharedAcrossConnections(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 3
			interval 10s
			key ip`))
	a, b := dial(t, in), dial(t, in)
	aID, bID := a.welcome(), b.welcome()
	rlSendAll(a, "a1", "a2")
	app.waitCalls(t, "/message", 2)
	rlSendAll(b, "b1", "b2")
	rlWantMessages(t, app, b, true, true, aID+":a1", aID+":a2", bID+":b1")
	rlSendAll(a, "a3")
	rlWantMessages(t, app, a, true, true, aID+":a1", aID+":a2", bID+":b1")
	if r := rlConsume(t, in, `{"key":"ip:127.0.0.1"}`); r.Allowed || r.Remaining != 0 {
		t.Fatalf("consume ip:127.0.0.1: %+v, want refused with 0 remaining", r)
	}
}

// `key user`: connections of one user (identity field user_key, default
// id) share points, other users have their own, under user:<value>.
func TestRateLimitKeyUser(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, true, `			points 2
			interval 10s
			key user`))
	u1a, u1b, u2 := dialUser(t, in, "u1"), dialUser(t, in, "u1"), dialUser(t, in, "u2")
	u1aID, u1bID, u2ID := u1a.welcome(), u1b.welcome(), u2.welcome()
	u1a.send("x1")
	app.waitCalls(t, "/message", 1)
	rlSendAll(u1b, "x2", "x3")
	app.waitCalls(t, "/message", 2)
	rlSendAll(u1a, "x4")
	rlSendAll(u2, "y1", "y2")
	rlWantMessages(t, app, u2, true, true, u1aID+":x1", u1bID+":x2", u2ID+":y1", u2ID+":y2")
	for _, key := range []string{"user:u1", "user:u2"} {
		if r := rlConsume(t, in, `{"key":"`+key+`"}`); r.Allowed {
			t.Errorf("consume %s after 2 messages: %+v, want refused", key, r)
		}
	}
	if r := rlConsume(t, in, `{"key":"user:u3"}`); !r.Allowed || r.Remaining != 1 {
		t.Errorf("consume user:u3: %+v, want allowed with 1 remaining", r)
	}
	// A third tab of u1 has no points either.
	u1c := dialUser(t, in, "u1")
	u1c.welcome()
	u1c.send("x5")
	u1c.quiet(300 * time.Millisecond)
	if n := len(app.callsTo("/message")); n != 4 {
		t.Fatalf("message hook called %d times, want 4", n)
	}
}

// `key <field>`: any identity field, under <field>:<value>; here the auth
// hook answers {"id":"a1","team":"t-a"}, so users of one team share.
func TestRateLimitKeyIdentityField(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		if c.Path == "/auth" {
			user, _ := strings.CutPrefix(c.Header.Get("Authorization"), "Bearer ")
			writeJSONAnswer(w, http.StatusOK, `{"id":"`+user+`","team":"t-`+strings.TrimRight(user, "0123456789")+`"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	in := startCaddy(t, rlSite(app, true, `			points 2
			interval 10s
			key team`))
	a1, a2, b1 := dialUser(t, in, "a1"), dialUser(t, in, "a2"), dialUser(t, in, "b1")
	a1ID, a2ID, b1ID := a1.welcome(), a2.welcome(), b1.welcome()
	a1.send("m1")
	app.waitCalls(t, "/message", 1)
	rlSendAll(a2, "m2", "m3")
	rlSendAll(b1, "n1")
	rlWantMessages(t, app, b1, true, true, a1ID+":m1", a2ID+":m2", b1ID+":n1")
	if r := rlConsume(t, in, `{"key":"team:t-a"}`); r.Allowed {
		t.Fatalf("consume team:t-a: %+v, want refused", r)
	}
}

// `block 2s`: once a key exceeds its points it stays refused for the
// block, although its points refill within the 200ms interval; then it
// passes again.
func TestRateLimitBlock(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 2
			interval 200ms
			block 2s`))
	c := dial(t, in)
	c.welcome()
	rlSendAll(c, "a", "b")
	app.waitCalls(t, "/message", 2)
	blocked := time.Now()
	c.send("c") // refused: the block starts
	c.quiet(500 * time.Millisecond)
	// More than two intervals later the points have refilled, but the
	// key is blocked: the frame is dropped and the API sees the ban.
	c.send("d")
	c.quiet(300 * time.Millisecond)
	if got := rlMessages(t, app, false); strings.Join(got, ",") != "a,b" {
		t.Fatalf("message hook got %q during the block, want a and b", got)
	}
	r := rlConsume(t, in, `{"key":"ip:127.0.0.1"}`)
	if r.Allowed || r.ResetMS <= 0 || r.ResetMS > 2000 {
		t.Fatalf("consume ip:127.0.0.1 during the block: %+v, want refused with reset_ms within the 2s block", r)
	}
	i := 0
	waitFor(t, 6*time.Second, "a message to pass after the block", func() bool {
		if len(app.callsTo("/message")) > 2 {
			return true
		}
		i++
		if i%5 == 1 { // one frame per 50 ms
			c.send(fmt.Sprintf("p%d", i))
		}
		return false
	})
	if el := time.Since(blocked); el < 1900*time.Millisecond {
		t.Fatalf("a message passed %s after the excess frame, within the 2s block", el)
	}
	got := rlMessages(t, app, false)
	if len(got) < 3 || !strings.HasPrefix(got[2], "p") {
		t.Fatalf("message hook got %q, want a, b, then a p frame sent after the block", got)
	}
}

// The /ratelimit API: consume, reset, ban, unban, with any key.
func TestRateLimitAPI(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, false, `			points 5
			interval 10s`))
	if r := rlConsume(t, in, `{"key":"k","cost":2}`); r != (rlResult{Allowed: true, Remaining: 3, ResetMS: 4000}) {
		t.Fatalf("consume k cost 2: %+v, want allowed, 3 remaining, reset_ms 4000", r)
	}
	if r := rlConsume(t, in, `{"key":"k","cost":3}`); !r.Allowed || r.Remaining != 0 || r.ResetMS < 9000 || r.ResetMS > 10000 {
		t.Fatalf("consume k cost 3: %+v, want allowed, 0 remaining, reset_ms about 10000", r)
	}
	if r := rlConsume(t, in, `{"key":"k"}`); r.Allowed || r.Remaining != 0 || r.ResetMS <= 0 || r.ResetMS > 2000 {
		t.Fatalf("consume k beyond the points: %+v, want refused, 0 remaining, reset_ms within one point's 2000", r)
	}
	// Another key is untouched; a cost above the points is refused.
	if r := rlConsume(t, in, `{"key":"other","cost":6}`); r.Allowed {
		t.Fatalf("consume other cost 6 of 5 points: %+v, want refused", r)
	}
	if r := rlConsume(t, in, `{"key":"other","cost":5}`); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("consume other cost 5: %+v, want allowed (the refused cost 6 spent nothing)", r)
	}
	// reset restores every point.
	rlOK(t, in, "reset", `{"key":"k"}`)
	if r := rlConsume(t, in, `{"key":"k","cost":5}`); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("consume k cost 5 after reset: %+v, want allowed", r)
	}
	// ban refuses for the duration; unban lifts it, points as they were.
	rlOK(t, in, "reset", `{"key":"k"}`)
	rlOK(t, in, "ban", `{"key":"k","duration":"1m"}`)
	if r := rlConsume(t, in, `{"key":"k"}`); r.Allowed || r.Remaining != 0 || r.ResetMS <= 55000 || r.ResetMS > 60000 {
		t.Fatalf("consume k while banned 1m: %+v, want refused, reset_ms about 60000", r)
	}
	rlOK(t, in, "unban", `{"key":"k"}`)
	if r := rlConsume(t, in, `{"key":"k","cost":2}`); !r.Allowed || r.Remaining != 3 {
		t.Fatalf("consume k after unban: %+v, want allowed, 3 remaining", r)
	}
	// reset also lifts a ban; unban/reset of unknown keys is fine.
	rlOK(t, in, "ban", `{"key":"k","duration":"30s"}`)
	rlOK(t, in, "reset", `{"key":"k"}`)
	if r := rlConsume(t, in, `{"key":"k"}`); !r.Allowed || r.Remaining != 4 {
		t.Fatalf("consume k after ban and reset: %+v, want allowed, 4 remaining", r)
	}
	rlOK(t, in, "unban", `{"key":"never-seen"}`)
	rlOK(t, in, "reset", `{"key":"never-seen"}`)
	if r := rlConsume(t, in, `{"key":"never-seen"}`); !r.Allowed || r.Remaining != 4 {
		t.Fatalf("consume never-seen: %+v, want allowed, 4 remaining", r)
	}

	// Bad requests.
	long := strings.Repeat("k", 513)
	for _, tc := range []struct {
		route, body, code string
	}{
		{"consume", `{"key":"k","cost":0}`, "BAD_COST"},
		{"consume", `{"key":"k","cost":-2}`, "BAD_COST"},
		{"consume", `{"key":"k","cost":1.5}`, "BAD_JSON"},
		{"consume", `{"key":"k","cost":"2"}`, "BAD_JSON"},
		{"consume", `{"cost":1}`, "BAD_KEY"},
		{"consume", `{"key":"","cost":1}`, "BAD_KEY"},
		{"consume", `{"key":"` + long + `"}`, "BAD_KEY"},
		{"consume", `{"key":7}`, "BAD_JSON"},
		{"consume", `{"key":"k","extra":1}`, "BAD_JSON"},
		{"consume", `not json`, "BAD_JSON"},
		{"ban", `{"key":"k","duration":"abc"}`, "BAD_DURATION"},
		{"ban", `{"key":"k","duration":"0s"}`, "BAD_DURATION"},
		{"ban", `{"key":"k","duration":"-1m"}`, "BAD_DURATION"},
		{"ban", `{"key":"k","duration":60}`, "BAD_JSON"},
		{"ban", `{"duration":"1m"}`, "BAD_KEY"},
		{"unban", `{}`, "BAD_KEY"},
		{"reset", `{"key":""}`, "BAD_KEY"},
	} {
		status, body := rlPost(t, in, tc.route, tc.body)
		wantAPIError(t, tc.route+" "+tc.body, status, body, http.StatusBadRequest, tc.code)
	}
	// None of them changed k (4 points left after the consume above, one
	// more spent here).
	if r := rlConsume(t, in, `{"key":"k"}`); !r.Allowed || r.Remaining != 3 {
		t.Fatalf("consume k after the bad requests: %+v, want allowed, 3 remaining", r)
	}
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/ratelimit/consume"), "", "")
	wantAPIError(t, "GET /ratelimit/consume", status, body, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
}

// Directive keys are namespaced, so the API can ban a user: with
// `key user`, banning user:u1 drops u1's application frames (every
// connection of u1), not u2's; unban restores them.
func TestRateLimitAPIBanUser(t *testing.T) {
	app := rlApp(t)
	in := startCaddy(t, rlSite(app, true, `			points 100
			interval 10s
			key user`))
	u1, u2 := dialUser(t, in, "u1"), dialUser(t, in, "u2")
	u1ID, u2ID := u1.welcome(), u2.welcome()
	u1.send("a")
	rlWantMessages(t, app, u1, true, false, u1ID+":a")
	rlOK(t, in, "ban", `{"key":"user:u1","duration":"1m"}`)
	u1.send("b")
	u1again := dialUser(t, in, "u1")
	u1againID := u1again.welcome()
	u1again.send("c")
	u2.send("d")
	rlWantMessages(t, app, u2, true, false, u1ID+":a", u2ID+":d")
	// Control frames still work for the banned user.
	u1.send(`{"type":"subscribe","topic":"t","ref":1}`)
	u1.expect(`{"type":"subscribed","topic":"t","ref":1}`)
	rlOK(t, in, "unban", `{"key":"user:u1"}`)
	u1.send("e")
	u1again.send("f")
	app.waitCalls(t, "/message", 4)
	u1.quiet(300 * time.Millisecond)
	got := rlMessages(t, app, true)
	want := []string{u1ID + ":a", u2ID + ":d", u1ID + ":e", u1againID + ":f"}
	sort.Strings(got[2:])
	sort.Strings(want[2:])
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("message hook got %q, want %q", got, want)
	}
	// Banning the connection key works the same way under key connection
	// only; under key user, conn:<id> is not the directive's key.
	rlOK(t, in, "ban", `{"key":"conn:`+u2ID+`","duration":"1m"}`)
	u2.send("g")
	app.waitCalls(t, "/message", 5)
}

// Without a rate_limit directive the /ratelimit routes answer 404
// NO_RATE_LIMIT.
func TestRateLimitAPIWithoutDirective(t *testing.T) {
	in := startCaddy(t, site)
	for _, route := range []string{"consume", "reset", "ban", "unban"} {
		status, body := rlPost(t, in, route, `{"key":"k","duration":"1m"}`)
		wantAPIError(t, route, status, body, http.StatusNotFound, "NO_RATE_LIMIT")
	}
}
