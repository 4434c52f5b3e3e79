package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// site is the handler config most protocol tests use: the API on loopback
// without a key, closes at once on shutdown.
const site = `
	realtime {
		api /_realtime
		shutdown_spread 0
	}
	respond "app" 200
`

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func publish(t testing.TB, in *instance, body string) string {
	t.Helper()
	status, resp := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", body)
	if status != http.StatusOK {
		t.Fatalf("publish %s: %d %s", body, status, resp)
	}
	return resp
}

// §9.1: 101 without a subprotocol; welcome first, with a fresh lowercase UUID v4.
func TestProtocolWelcome(t *testing.T) {
	in := startCaddy(t, site)
	a, resp, err := tryDial(in, dialOpts{origin: in.origin()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Protocol") != "" {
		t.Fatalf("upgrade answered %d with subprotocol %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	c1, c2 := dial(t, in), dial(t, in)
	id1, id2 := c1.welcome(), c2.welcome()
	if !uuidV4.MatchString(id1) || !uuidV4.MatchString(id2) || id1 == id2 {
		t.Fatalf("session ids %q and %q must be distinct lowercase UUID v4", id1, id2)
	}
}

// Requests that are not upgrades on the path go to the next handler.
func TestProtocolNonUpgradePassesThrough(t *testing.T) {
	in := startCaddy(t, site)
	status, body := apiCall(t, http.MethodGet, in.url("/ws"), "", "")
	if status != 200 || body != "app" {
		t.Fatalf("GET /ws without Upgrade: %d %q, want the app's 200", status, body)
	}
	status, body = apiCall(t, http.MethodGet, in.url("/other"), "", "")
	if status != 200 || body != "app" {
		t.Fatalf("GET /other: %d %q", status, body)
	}
}

func upgradeStatus(t *testing.T, in *instance, h http.Header) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, in.url("/ws"), nil)
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, resp.Header, strings.TrimSpace(b.String())
}

func handshake(origin string) http.Header {
	h := http.Header{}
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if origin != "" {
		h.Set("Origin", origin)
	}
	return h
}

// §2.1 and §9.2–9.3: malformed handshake 400, origin policy 403, the 31st
// upgrade within the window 429 with Retry-After.
func TestProtocolUpgradeChecks(t *testing.T) {
	in := startCaddy(t, site)
	bad := handshake(in.origin())
	bad.Del("Sec-WebSocket-Key")
	if status, _, _ := upgradeStatus(t, in, bad); status != http.StatusBadRequest {
		t.Errorf("handshake without key: %d, want 400", status)
	}
	if status, _, body := upgradeStatus(t, in, handshake("http://evil.example")); status != http.StatusForbidden || body != "Origin not allowed" {
		t.Errorf("cross-site origin: %d %q, want 403 Origin not allowed", status, body)
	}
	if status, _, _ := upgradeStatus(t, in, handshake("")); status != http.StatusForbidden {
		t.Errorf("missing origin without auth: %d, want 403", status)
	}
	// The two origin refusals count (check 4 runs before check 5); the
	// malformed handshake does not (check 1 comes first): 28 more fit.
	for i := 0; i < 28; i++ {
		c, _, err := tryDial(in, dialOpts{origin: in.origin()})
		if err != nil {
			t.Fatalf("upgrade %d refused: %v", i+3, err)
		}
		c.CloseNow()
	}
	status, h, _ := upgradeStatus(t, in, handshake(in.origin()))
	if status != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Fatalf("31st upgrade: %d Retry-After %q, want 429 with Retry-After", status, h.Get("Retry-After"))
	}
}

func TestProtocolOriginList(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		origins https://app.example http://other.example:8080
		shutdown_spread 0
	}`)
	if _, _, err := tryDial(in, dialOpts{origin: "https://app.example"}); err != nil {
		t.Errorf("listed origin refused: %v", err)
	}
	if _, _, err := tryDial(in, dialOpts{origin: in.origin()}); err == nil {
		t.Errorf("same origin accepted although not listed")
	}
}

// §9.5, §9.7, §9.12: legacy subscribe without ref gets no ack and receives
// publishes; refs are echoed verbatim; seq advances per publish even with
// no subscriber.
func TestProtocolSubscribeAndPublish(t *testing.T) {
	in := startCaddy(t, site)
	legacy := dial(t, in)
	legacy.welcome()
	legacy.send(`{"type":"subscribe","topic":"todos"}`)

	cur := dial(t, in)
	cur.welcome()
	cur.send(`{"type":"hello","caps":["batch"]}`)
	cur.send(`{"type":"subscribe","topic":"todos","ref":3}`)
	cur.expect(`{"type":"subscribed","topic":"todos","ref":3}`)
	cur.send(`{"type":"subscribe","topic":"x","ref":"a1"}`)
	cur.expect(`{"type":"subscribed","topic":"x","ref":"a1"}`)
	waitFor(t, 3*time.Second, "legacy subscription", func() bool {
		_, s := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
		return strings.Contains(s, `"subscriptions":3`)
	})

	if got := publish(t, in, `{"topic":"todos","event":"created","data":{"id":1}}`); got != `{"seq":1}` {
		t.Fatalf("publish answered %s", got)
	}
	want := `{"topic":"todos","event":"created","data":{"id":1},"seq":1}`
	legacy.expect(want)
	cur.expect(want)
	publish(t, in, `{"topic":"nobody","event":"e"}`)
	if got := publish(t, in, `{"topic":"nobody","event":"e"}`); got != `{"seq":2}` {
		t.Fatalf("seq without subscribers: %s, want 2", got)
	}
	// §9.14: no data → null; whitespace in data is compacted, numbers untouched.
	publish(t, in, `{"topic":"todos","event":"updated"}`)
	legacy.expect(`{"topic":"todos","event":"updated","data":null,"seq":2}`)
	publish(t, in, `{"topic":"todos","event":"big","data":{ "n" : 1.50e10 , "s":"<&>"}}`)
	legacy.expect(`{"topic":"todos","event":"big","data":{"n":1.50e10,"s":"<&>"},"seq":3}`)
	// seq off on an unbuffered topic: no seq, counter stays.
	publish(t, in, `{"topic":"todos","event":"flash","data":1,"seq":false}`)
	legacy.expect(`{"topic":"todos","event":"flash","data":1}`)
	publish(t, in, `{"topic":"todos","event":"after","data":2}`)
	legacy.expect(`{"topic":"todos","event":"after","data":2,"seq":4}`)

	// unsubscribe stops delivery; no ack.
	legacy.send(`{"type":"unsubscribe","topic":"todos"}`)
	waitFor(t, 3*time.Second, "unsubscribe", func() bool {
		_, s := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
		return strings.Contains(s, `"subscriptions":2`)
	})
	publish(t, in, `{"topic":"todos","event":"gone","data":3}`)
	for _, f := range []string{`{"topic":"todos","event":"big","data":{"n":1.50e10,"s":"<&>"},"seq":3}`,
		`{"topic":"todos","event":"updated","data":null,"seq":2}`} {
		_ = f
	}
	legacy.quiet(300 * time.Millisecond)
}

// §9.8, §9.9: batch denials first, acks in order, 256 entries at most;
// topic validity.
func TestProtocolSubscribeBatch(t *testing.T) {
	in := startCaddy(t, site)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["ok","bad\u0001","__x"],"ref":5}`)
	c.expect(`{"type":"subscribe-denied","topic":"bad\u0001","ref":5,"reason":"INVALID_TOPIC"}`)
	c.expect(`{"type":"subscribe-denied","topic":"__x","ref":5,"reason":"INVALID_TOPIC"}`)
	c.expect(`{"type":"subscribed","topic":"ok","ref":5}`)

	topics := make([]string, 300)
	for i := range topics {
		topics[i] = fmt.Sprintf("t%d", i)
	}
	b, _ := json.Marshal(map[string]any{"type": "subscribe-batch", "topics": topics, "ref": 6})
	c.send(string(b))
	for i := 0; i < 256; i++ {
		c.expect(fmt.Sprintf(`{"type":"subscribed","topic":"t%d","ref":6}`, i))
	}
	c.quiet(300 * time.Millisecond)

	long := strings.Repeat("a", 256)
	for _, tc := range []struct {
		name, topic, want string
	}{
		{"256 printable characters are accepted", `"` + long + `"`, "subscribed"},
		{"257 characters are refused", `"` + long + `a"`, "INVALID_TOPIC"},
		{"non-ASCII is refused by default", `"caf\u00e9"`, "INVALID_TOPIC"},
		{"a quote is refused", `"a\"b"`, "INVALID_TOPIC"},
		{"a backslash is refused", `"a\\b"`, "INVALID_TOPIC"},
		{"a control character is refused", `"a\tb"`, "INVALID_TOPIC"},
		{"a non-string topic is refused and echoed", `42`, "INVALID_TOPIC"},
		{"__group from a current client is refused", `"__group:x"`, "INVALID_TOPIC"},
		{"__realtime is refused", `"__realtime"`, "INVALID_TOPIC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.send(`{"type":"subscribe-batch","topics":[` + tc.topic + `],"ref":9}`)
			got := c.next(3 * time.Second)
			if tc.want == "subscribed" {
				if got != `{"type":"subscribed","topic":`+tc.topic+`,"ref":9}` {
					t.Fatalf("got %s", got)
				}
				return
			}
			if got != `{"type":"subscribe-denied","topic":`+tc.topic+`,"ref":9,"reason":"`+tc.want+`"}` {
				t.Fatalf("got %s", got)
			}
		})
	}
}

// §9.11: beyond the subscription cap, RATE_LIMITED.
func TestProtocolSubscriptionCap(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		shutdown_spread 0
		limits {
			max_subscriptions 2
		}
	}`)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"subscribe-batch","topics":["a","b","a","c"],"ref":1}`)
	c.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"b","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	c.expect(`{"type":"subscribe-denied","topic":"c","ref":1,"reason":"RATE_LIMITED"}`)
}

// §9.18: a batch publish reaches batch-capable clients as one batch frame
// and legacy clients as plain envelopes, seq k and k+1.
func TestProtocolBatchPublish(t *testing.T) {
	in := startCaddy(t, site)
	cur := dial(t, in)
	cur.welcome()
	cur.send(`{"type":"hello","caps":["batch"]}`)
	cur.send(`{"type":"subscribe-batch","topics":["a","b"],"ref":1}`)
	cur.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	cur.expect(`{"type":"subscribed","topic":"b","ref":1}`)
	nocap := dial(t, in)
	nocap.welcome()
	nocap.send(`{"type":"hello","caps":[]}`)
	nocap.send(`{"type":"subscribe","topic":"a","ref":1}`)
	nocap.expect(`{"type":"subscribed","topic":"a","ref":1}`)
	legacy := dial(t, in)
	legacy.welcome()
	legacy.send(`{"type":"subscribe","topic":"a"}`)
	waitFor(t, 3*time.Second, "legacy subscription", func() bool {
		_, s := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
		return strings.Contains(s, `"subscriptions":4`)
	})

	got := publish(t, in, `[{"topic":"a","event":"e","data":1},{"topic":"a","event":"e","data":2}]`)
	if got != `{"seqs":[1,2]}` {
		t.Fatalf("batch publish answered %s", got)
	}
	cur.expect(`{"type":"batch","events":[{"topic":"a","event":"e","data":1,"seq":1},{"topic":"a","event":"e","data":2,"seq":2}]}`)
	for _, c := range []*wsClient{nocap, legacy} {
		c.expect(`{"topic":"a","event":"e","data":1,"seq":1}`)
		c.expect(`{"topic":"a","event":"e","data":2,"seq":2}`)
	}
	// Several topics: each connection gets its own subsequence; a batch of one is plain.
	publish(t, in, `[{"topic":"a","event":"x","data":1},{"topic":"b","event":"y","data":2},{"topic":"c","event":"z","data":3}]`)
	cur.expect(`{"type":"batch","events":[{"topic":"a","event":"x","data":1,"seq":3},{"topic":"b","event":"y","data":2,"seq":1}]}`)
	legacy.expect(`{"topic":"a","event":"x","data":1,"seq":3}`)
	// Coalesce: the last event per key survives at its own position.
	got = publish(t, in, `[{"topic":"a","event":"p","data":1,"coalesce":"k"},{"topic":"a","event":"q","data":2},{"topic":"a","event":"p","data":3,"coalesce":"k"}]`)
	if got != `{"seqs":[4,5]}` {
		t.Fatalf("coalesced batch answered %s", got)
	}
	cur.expect(`{"type":"batch","events":[{"topic":"a","event":"q","data":2,"seq":4},{"topic":"a","event":"p","data":3,"seq":5}]}`)
}

// §2.5, §9.16: after the quiet period a heartbeat is sent.
func TestProtocolHeartbeat(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		keepalive 5s
		shutdown_spread 0
	}`)
	c := dial(t, in)
	c.welcome()
	start := time.Now()
	if got := c.next(8 * time.Second); got != `{"type":"heartbeat"}` {
		t.Fatalf("got %s, want a heartbeat", got)
	}
	if el := time.Since(start); el < 3*time.Second {
		t.Fatalf("heartbeat after %s, before the 5s quiet period", el)
	}
}

// §5.3, §5.4, §9.20, §9.23 without replay buffers: resume is acknowledged;
// a malformed resume is an application message; replay requests end.
func TestProtocolResumeAndReplayWithoutBuffers(t *testing.T) {
	in := startCaddy(t, site)
	c := dial(t, in)
	c.welcome()
	c.send(`{"type":"hello","caps":["batch"]}`)
	c.send(`{"type":"resume","sessionId":"abc","lastSeenSeqs":{"chat":5}}`)
	c.expect(`{"type":"resumed"}`)
	c.send(`{"type":"resume","sessionId":7,"lastSeenSeqs":{"chat":5}}`)
	c.send(`{"type":"replay","topic":"chat","since":5,"reqId":2}`)
	c.expect(`{"topic":"__replay:chat","event":"end","data":{"reqId":2}}`)
	c.send(`{"type":"replay","topic":"chat","since":-1,"reqId":2}`)
	c.expect(`{"topic":"__replay:chat","event":"end","data":{"reqId":2}}`)
	c.send(`{"type":"replay","topic":"chat","since":1.5,"reqId":"r"}`)
	c.expect(`{"topic":"__replay:chat","event":"end","data":{"reqId":"r"}}`)
	c.send(`{"type":"replay","topic":"__x","since":1,"reqId":3}`)
	c.expect(`{"topic":"__replay:__x","event":"end","data":{"reqId":3,"denied":true}}`)
	c.send(`{"type":"replay","topic":"chat","since":0}`)
	c.expect(`{"topic":"__replay:chat","event":"end","data":null}`)
	// Legacy __replay:<t> subscribe is accepted silently; unsubscribe too.
	l := dial(t, in)
	l.welcome()
	l.send(`{"type":"subscribe","topic":"__replay:chat"}`)
	l.send(`{"type":"unsubscribe","topic":"__replay:chat"}`)
	l.quiet(200 * time.Millisecond)
}

// §9.33: an inbound frame over max_payload closes with 1009.
func TestProtocolOversizedFrame(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		shutdown_spread 0
		limits {
			max_payload 1KiB
		}
	}`)
	c := dial(t, in)
	c.welcome()
	c.send(strings.Repeat("x", 1024)) // exactly the limit: fine
	c.send(strings.Repeat("x", 1025))
	if code := c.closeStatus(5 * time.Second); code != websocket.StatusMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}
}

// §8, §9.34: excess frames are dropped; past the threshold, close 4429.
func TestProtocolInboundRateLimit(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		shutdown_spread 0
		limits {
			inbound_rate 10
			inbound_burst 10
			rate_limit_close 20
		}
	}`)
	c := dial(t, in)
	c.welcome()
	for i := 0; i < 40; i++ {
		// The server may close mid-flood: write errors are expected.
		_ = c.c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe","topic":"t"}`))
	}
	if code := c.closeStatus(5 * time.Second); code != 4429 {
		t.Fatalf("close code %d, want 4429", code)
	}
}

// §9.36: graceful stop closes every connection with 1001 Server shutting down.
func TestProtocolShutdownCloses1001(t *testing.T) {
	in := startCaddy(t, site)
	a, b := dial(t, in), dial(t, in)
	a.welcome()
	b.welcome()
	in.stop(15 * time.Second)
	for _, c := range []*wsClient{a, b} {
		if code := c.closeStatus(5 * time.Second); code != websocket.StatusGoingAway {
			t.Fatalf("close code %d, want 1001", code)
		}
		var ce websocket.CloseError
		if !asClose(c.err, &ce) || ce.Reason != "Server shutting down" {
			t.Fatalf("close reason %v, want Server shutting down", c.err)
		}
	}
}
