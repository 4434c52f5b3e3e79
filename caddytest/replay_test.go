package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Integration tests of replay buffers, resume and replay requests
// (docs/protocol.md §5, §9.12-13, §9.19-24) and of the /replay API.

// rpSite is a handler with the API on loopback, no upgrade rate limit
// (tests dial several times) and the given extra lines (replay rules).
func rpSite(extra string) string {
	return `
	realtime {
		api /_realtime
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
` + extra + `
	}
	respond "app" 200`
}

// rpEnv is the exact envelope {topic,event,data[,seq]} (seq 0: none).
func rpEnv(topic, event, data string, seq int) string {
	if seq == 0 {
		return fmt.Sprintf(`{"topic":%q,"event":%q,"data":%s}`, topic, event, data)
	}
	return fmt.Sprintf(`{"topic":%q,"event":%q,"data":%s,"seq":%d}`, topic, event, data, seq)
}

// rpBatch is the exact batch frame holding envs.
func rpBatch(envs ...string) string {
	return `{"type":"batch","events":[` + strings.Join(envs, ",") + `]}`
}

// rpMsg is the exact replay msg frame on __replay:<topic>; reqID is the
// raw JSON token, "" for none.
func rpMsg(topic, reqID string, seq int, event, data string) string {
	inner := fmt.Sprintf(`"seq":%d,"event":%q,"data":%s`, seq, event, data)
	if reqID != "" {
		inner = `"reqId":` + reqID + `,` + inner
	}
	return `{"topic":"__replay:` + topic + `","event":"msg","data":{` + inner + `}}`
}

// rpEnd is the exact replay end frame; data is its raw JSON data.
func rpEnd(topic, data string) string {
	return `{"topic":"__replay:` + topic + `","event":"end","data":` + data + `}`
}

// rpTruncated is the resume truncation notice (§5.3 step 4).
func rpTruncated(topic string) string {
	return `{"topic":"` + topic + `","event":"truncated","data":null}`
}

// rpDial connects and reads the welcome; caps is the raw JSON caps array
// of a hello sent at once, or "" for a legacy connection (no hello).
func rpDial(t *testing.T, in *instance, caps string) (*wsClient, string) {
	t.Helper()
	c := dial(t, in)
	id := c.welcome()
	if caps != "" {
		c.send(`{"type":"hello","caps":` + caps + `}`)
	}
	return c, id
}

// rpPublish publishes one event and checks the answer is exactly want.
func rpPublish(t *testing.T, in *instance, body, want string) {
	t.Helper()
	if got := publish(t, in, body); got != want {
		t.Fatalf("publish %s answered %s, want %s", body, got, want)
	}
}

// rpPublishN publishes events e<from>..e<to> with data {"id":n} to topic,
// checking each gets seq n.
func rpPublishN(t *testing.T, in *instance, topic string, from, to int) {
	t.Helper()
	for n := from; n <= to; n++ {
		rpPublish(t, in, fmt.Sprintf(`{"topic":%q,"event":"e","data":{"id":%d}}`, topic, n), fmt.Sprintf(`{"seq":%d}`, n))
	}
}

// rpIDEnv is the envelope rpPublishN sends for n.
func rpIDEnv(topic string, n int) string {
	return rpEnv(topic, "e", fmt.Sprintf(`{"id":%d}`, n), n)
}

// rpIDEnvs returns rpIDEnv for from..to.
func rpIDEnvs(topic string, from, to int) []string {
	var out []string
	for n := from; n <= to; n++ {
		out = append(out, rpIDEnv(topic, n))
	}
	return out
}

// rpSeq returns GET /seq?topic=topic.
func rpSeq(t *testing.T, in *instance, topic string) string {
	t.Helper()
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/seq?topic="+url.QueryEscape(topic)), "", "")
	if status != http.StatusOK {
		t.Fatalf("GET /seq?topic=%s: %d %s", topic, status, body)
	}
	return body
}

// rpAnswer is a GET /replay answer; Events keeps the raw array so
// payloads can be compared byte for byte.
type rpAnswer struct {
	Events    string
	Truncated bool
	Seq       uint64
}

// rpGetReplay calls GET /replay?topic=T[&since=N] and checks the answer is
// exactly {"events","truncated","seq"}.
func rpGetReplay(t *testing.T, in *instance, topic, since string) rpAnswer {
	t.Helper()
	q := "/_realtime/replay?topic=" + url.QueryEscape(topic)
	if since != "" {
		q += "&since=" + url.QueryEscape(since)
	}
	status, body := apiCall(t, http.MethodGet, in.url(q), "", "")
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", q, status, body)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("GET %s: body %s: %v", q, body, err)
	}
	if len(m) != 3 || m["events"] == nil || m["truncated"] == nil || m["seq"] == nil {
		t.Fatalf("GET %s: body %s, want exactly events, truncated and seq", q, body)
	}
	var a rpAnswer
	a.Events = string(m["events"])
	if err := json.Unmarshal(m["truncated"], &a.Truncated); err != nil {
		t.Fatalf("GET %s: truncated %s: %v", q, m["truncated"], err)
	}
	if err := json.Unmarshal(m["seq"], &a.Seq); err != nil {
		t.Fatalf("GET %s: seq %s: %v", q, m["seq"], err)
	}
	return a
}

// rpEvents is the exact events array of a GET /replay answer for
// (seq, event, data) triples.
func rpEvents(items ...string) string { return "[" + strings.Join(items, ",") + "]" }

func rpEvent(seq int, event, data string) string {
	return fmt.Sprintf(`{"seq":%d,"event":%q,"data":%s}`, seq, event, data)
}

// rpExpectAll asserts the next frames are exactly want, in order.
func rpExpectAll(c *wsClient, want ...string) {
	c.t.Helper()
	for _, w := range want {
		c.expect(w)
	}
}

// §5.1 rule 2 and 4, §9.12-13 on one instance: a buffered topic's seq comes
// from its buffer, GET /seq reports the buffer's head, and "seq":false does
// not turn stamping off on a buffered topic (it does on other topics).
func TestReplaySeqFromBuffer(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"subscribe-batch","topics":["chat","news"],"ref":1}`)
	rpExpectAll(c, `{"type":"subscribed","topic":"chat","ref":1}`, `{"type":"subscribed","topic":"news","ref":1}`)

	if got := rpSeq(t, in, "chat"); got != `{"seq":0}` {
		t.Fatalf("GET /seq before any publish: %s, want {\"seq\":0}", got)
	}
	rpPublish(t, in, `{"topic":"chat","event":"created","data":{"id":1}}`, `{"seq":1}`)
	c.expect(`{"topic":"chat","event":"created","data":{"id":1},"seq":1}`)
	// Buffered topics always stamp.
	rpPublish(t, in, `{"topic":"chat","event":"flash","data":2,"seq":false}`, `{"seq":2}`)
	c.expect(`{"topic":"chat","event":"flash","data":2,"seq":2}`)
	rpPublish(t, in, `[{"topic":"chat","event":"a","data":3,"seq":false},{"topic":"news","event":"n","data":4,"seq":false},{"topic":"chat","event":"b","data":5}]`, `{"seqs":[3,null,4]}`)
	c.expect(rpBatch(rpEnv("chat", "a", "3", 3), rpEnv("news", "n", "4", 0), rpEnv("chat", "b", "5", 4)))
	// An unbuffered topic: "seq":false sends no seq and leaves its counter.
	rpPublish(t, in, `{"topic":"news","event":"n","data":6}`, `{"seq":1}`)
	c.expect(`{"topic":"news","event":"n","data":6,"seq":1}`)

	if got := rpSeq(t, in, "chat"); got != `{"seq":4}` {
		t.Fatalf("GET /seq?topic=chat: %s, want {\"seq\":4}", got)
	}
	if got := rpSeq(t, in, "news"); got != `{"seq":1}` {
		t.Fatalf("GET /seq?topic=news: %s, want {\"seq\":1}", got)
	}
	// The buffer holds exactly what was stamped, with the same seqs.
	a := rpGetReplay(t, in, "chat", "")
	want := rpEvents(rpEvent(1, "created", `{"id":1}`), rpEvent(2, "flash", "2"), rpEvent(3, "a", "3"), rpEvent(4, "b", "5"))
	if a.Events != want || a.Truncated || a.Seq != 4 {
		t.Fatalf("GET /replay?topic=chat: %+v, want events %s, not truncated, seq 4", a, want)
	}
	// Clearing every buffer keeps the counters: the stream goes on with 5,
	// and an unbuffered topic's counter goes on too.
	if status, body := apiCall(t, http.MethodDelete, in.url("/_realtime/replay"), "", ""); status != http.StatusOK {
		t.Fatalf("DELETE /replay: %d %s", status, body)
	}
	rpPublish(t, in, `{"topic":"chat","event":"again","data":null}`, `{"seq":5}`)
	c.expect(`{"topic":"chat","event":"again","data":null,"seq":5}`)
	rpPublish(t, in, `{"topic":"news","event":"n","data":7}`, `{"seq":2}`)
	c.expect(`{"topic":"news","event":"n","data":7,"seq":2}`)
	c.quiet(200 * time.Millisecond)
}

// §5.3, §9.19: a current client that saw seq 5 reconnects with hello,
// resume {"chat":5} and subscribe-batch: resumed, then 6..9 (one batch
// frame with the batch cap, plain envelopes without) before subscribed for
// chat, then live events; no duplicates, no gaps, resumed once.
func TestReplayResumeGapFill(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	a, aID := rpDial(t, in, `["batch"]`)
	a.send(`{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
	a.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	rpPublishN(t, in, "chat", 1, 5)
	rpExpectAll(a, rpIDEnvs("chat", 1, 5)...)
	a.c.CloseNow()

	rpPublishN(t, in, "chat", 6, 9) // missed while disconnected

	b, _ := rpDial(t, in, `["batch"]`)
	b.send(`{"type":"resume","sessionId":"` + aID + `","lastSeenSeqs":{"chat":5}}`)
	b.send(`{"type":"subscribe-batch","topics":["chat","other"],"ref":2}`)
	b.expect(`{"type":"resumed"}`)
	b.expect(rpBatch(rpIDEnvs("chat", 6, 9)...))
	b.expect(`{"type":"subscribed","topic":"chat","ref":2}`)
	b.expect(`{"type":"subscribed","topic":"other","ref":2}`)
	rpPublishN(t, in, "chat", 10, 10)
	b.expect(rpIDEnv("chat", 10))
	b.quiet(200 * time.Millisecond)

	// Without the batch cap the same gap comes as plain envelopes (6..10
	// now), in order, before subscribed.
	n, _ := rpDial(t, in, `[]`)
	n.send(`{"type":"resume","sessionId":"` + aID + `","lastSeenSeqs":{"chat":5}}`)
	n.send(`{"type":"subscribe","topic":"chat","ref":3}`)
	n.expect(`{"type":"resumed"}`)
	rpExpectAll(n, rpIDEnvs("chat", 6, 10)...)
	n.expect(`{"type":"subscribed","topic":"chat","ref":3}`)
	rpPublishN(t, in, "chat", 11, 11)
	n.expect(rpIDEnv("chat", 11))
	b.expect(rpIDEnv("chat", 11))

	// The pending resume was consumed: subscribing again after an
	// unsubscribe fills nothing.
	n.send(`{"type":"unsubscribe","topic":"chat"}`)
	n.send(`{"type":"subscribe","topic":"chat","ref":4}`)
	n.expect(`{"type":"subscribed","topic":"chat","ref":4}`)
	// A resume for a topic the connection already holds is ignored.
	n.send(`{"type":"resume","sessionId":"x","lastSeenSeqs":{"chat":0}}`)
	n.expect(`{"type":"resumed"}`)
	n.send(`{"type":"subscribe","topic":"chat","ref":5}`)
	n.expect(`{"type":"subscribed","topic":"chat","ref":5}`)
	n.quiet(200 * time.Millisecond)

	// A client that is not behind gets nothing but resumed and the ack.
	u, _ := rpDial(t, in, `["batch"]`)
	u.send(`{"type":"resume","sessionId":"y","lastSeenSeqs":{"chat":11}}`)
	u.send(`{"type":"subscribe-batch","topics":["chat"],"ref":6}`)
	rpExpectAll(u, `{"type":"resumed"}`, `{"type":"subscribed","topic":"chat","ref":6}`)
	u.quiet(200 * time.Millisecond)
}

// §5.3, §9.20: resume entries deliver nothing for topics not resubscribed,
// whose subscribe is denied, without a buffer, or that are malformed; a
// resume whose sessionId is not a string is an application message.
func TestReplayResumeNotResubscribedOrDenied(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		switch c.Path {
		case "/subscribe":
			writeJSONAnswer(w, http.StatusOK, `{"chat-secret":false}`)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	in := startCaddy(t, rpSite(`		replay chat*
		subscribe_hook `+app.url("/subscribe")+`
		message_hook `+app.url("/message")))
	for _, topic := range []string{"chat-a", "chat-b", "chat-secret", "chat-c", "chat-d", "chat-e", "chat-f", "news"} {
		rpPublish(t, in, `{"topic":"`+topic+`","event":"e","data":1}`, `{"seq":1}`)
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat-a":0,"chat-b":0,"chat-secret":0,"news":0,"chat-c":-1,"chat-d":0.5,"chat-e":"0","__x":0}}`)
	c.expect(`{"type":"resumed"}`)
	c.send(`{"type":"subscribe-batch","topics":["chat-secret","chat-a","news","chat-c","chat-d","chat-e"],"ref":1}`)
	rpExpectAll(c,
		`{"type":"subscribe-denied","topic":"chat-secret","ref":1,"reason":"FORBIDDEN"}`,
		rpEnv("chat-a", "e", "1", 1),
		`{"type":"subscribed","topic":"chat-a","ref":1}`,
		`{"type":"subscribed","topic":"news","ref":1}`,
		`{"type":"subscribed","topic":"chat-c","ref":1}`,
		`{"type":"subscribed","topic":"chat-d","ref":1}`,
		`{"type":"subscribed","topic":"chat-e","ref":1}`,
	)
	// chat-b was never resubscribed: nothing comes for it, not even when
	// it gets a new event.
	rpPublish(t, in, `{"topic":"chat-b","event":"e","data":2}`, `{"seq":2}`)
	c.quiet(300 * time.Millisecond)

	// §9.20: a resume with a non-string sessionId gets no resumed and
	// reaches the message hook byte-exact.
	// It records no pending resume either. Neither does one whose
	// lastSeenSeqs is not an object, or null.
	bad := []string{
		`{"type":"resume","sessionId":7,"lastSeenSeqs":{"chat-f":0}}`,
		`{"type":"resume","sessionId":"s","lastSeenSeqs":[{"chat-f":0}]}`,
		`{"type":"resume","sessionId":"s","lastSeenSeqs":null}`,
		`{"type":"resume","sessionId":"s"}`,
	}
	for _, b := range bad {
		c.send(b)
	}
	calls := app.waitCalls(t, "/message", len(bad))
	for i, b := range bad {
		if got := decodeMsg(t, calls[i]).bytes(t); string(got) != b {
			t.Errorf("message hook call %d got %q, want %q", i, got, b)
		}
	}
	c.send(`{"type":"subscribe","topic":"chat-f","ref":2}`)
	c.expect(`{"type":"subscribed","topic":"chat-f","ref":2}`)
	c.quiet(200 * time.Millisecond)
	// A denied topic's pending resume is not consumed by the denial: it
	// fills the gap on the next successful subscribe (§5.3 step 3), here
	// chat-b, still within the 10 s.
	c.send(`{"type":"subscribe","topic":"chat-b","ref":3}`)
	rpExpectAll(c, rpBatch(rpEnv("chat-b", "e", "1", 1), rpEnv("chat-b", "e", "2", 2)), `{"type":"subscribed","topic":"chat-b","ref":3}`)
}

// §8: a pending resume is discarded after 10 s. Slow (about 10 s), so it
// runs in parallel with the other parallel tests of the package.
func TestReplayResumePendingExpires(t *testing.T) {
	t.Parallel()
	in := startCaddy(t, rpSite(`		replay chat`))
	rpPublishN(t, in, "chat", 1, 2)
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":0,"fresh":0}}`)
	c.expect(`{"type":"resumed"}`)
	c.quiet(10*time.Second + 300*time.Millisecond)
	c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	c.quiet(200 * time.Millisecond)
}

// §5.3 step 1, §8: a resume with 5000 entries is accepted; only the first
// 1024 (in frame order) are used, so a topic listed beyond them gets no gap
// fill, and the gateway keeps working.
func TestReplayResumeManyEntries(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay r*`))
	rpPublish(t, in, `[{"topic":"r0","event":"e","data":0},{"topic":"r1023","event":"e","data":1023},{"topic":"r1024","event":"e","data":1024},{"topic":"r4999","event":"e","data":4999}]`, `{"seqs":[1,1,1,1]}`)
	var b strings.Builder
	b.WriteString(`{"type":"resume","sessionId":"many","lastSeenSeqs":{`)
	for i := 0; i < 5000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"r%d":0`, i)
	}
	b.WriteString(`}}`)
	frame := b.String()
	if len(frame) < 8192 || len(frame) >= 65536 {
		t.Fatalf("resume frame of %d bytes, want 8192..65535 (a control frame only because it is a resume)", len(frame))
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(frame)
	c.expect(`{"type":"resumed"}`)
	c.send(`{"type":"subscribe-batch","topics":["r0","r1023","r1024","r4999"],"ref":1}`)
	rpExpectAll(c,
		rpEnv("r0", "e", "0", 1),
		`{"type":"subscribed","topic":"r0","ref":1}`,
		rpEnv("r1023", "e", "1023", 1),
		`{"type":"subscribed","topic":"r1023","ref":1}`,
		`{"type":"subscribed","topic":"r1024","ref":1}`,
		`{"type":"subscribed","topic":"r4999","ref":1}`,
	)
	c.quiet(200 * time.Millisecond)
	// Still alive: the connection gets live events, the API answers.
	rpPublish(t, in, `{"topic":"r1024","event":"e","data":2}`, `{"seq":2}`)
	c.expect(rpEnv("r1024", "e", "2", 2))
	if status, body := apiCall(t, http.MethodGet, in.url("/_realtime/health"), "", ""); status != http.StatusOK {
		t.Fatalf("health after a 5000-entry resume: %d %s", status, body)
	}
	// A second huge resume on the same connection is fine too.
	c.send(frame)
	c.expect(`{"type":"resumed"}`)
}

// §5.4, §9.21: a replay request yields msg frames on __replay:<t> (no seq,
// reqId echoed verbatim), then exactly one end; it does not subscribe.
func TestReplayRequestFrames(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat*`))
	rpPublishN(t, in, "chat", 1, 7)
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"replay","topic":"chat","since":5,"reqId":2}`)
	rpExpectAll(c,
		`{"topic":"__replay:chat","event":"msg","data":{"reqId":2,"seq":6,"event":"e","data":{"id":6}}}`,
		`{"topic":"__replay:chat","event":"msg","data":{"reqId":2,"seq":7,"event":"e","data":{"id":7}}}`,
		`{"topic":"__replay:chat","event":"end","data":{"reqId":2}}`,
	)
	// A string reqId is echoed as a string; since 0 replays everything.
	c.send(`{"type":"replay","topic":"chat","since":0,"reqId":"r1"}`)
	for n := 1; n <= 7; n++ {
		c.expect(rpMsg("chat", `"r1"`, n, "e", fmt.Sprintf(`{"id":%d}`, n)))
	}
	c.expect(rpEnd("chat", `{"reqId":"r1"}`))
	// since >= head: end at once.
	c.send(`{"type":"replay","topic":"chat","since":7,"reqId":3}`)
	c.expect(rpEnd("chat", `{"reqId":3}`))
	// since > head: the client holds a seq the store lost, truncated.
	c.send(`{"type":"replay","topic":"chat","since":100,"reqId":4}`)
	c.expect(rpEnd("chat", `{"reqId":4,"truncated":true}`))
	// since 5.0 is the integer 5 (§5.4: Number.isInteger).
	c.send(`{"type":"replay","topic":"chat","since":6.0,"reqId":5}`)
	rpExpectAll(c, rpMsg("chat", "5", 7, "e", `{"id":7}`), rpEnd("chat", `{"reqId":5}`))
	// A buffered topic nobody published to: end at once.
	c.send(`{"type":"replay","topic":"chat-empty","since":0,"reqId":6}`)
	c.expect(rpEnd("chat-empty", `{"reqId":6}`))

	// The replay did not subscribe.
	rpPublishN(t, in, "chat", 8, 8)
	c.quiet(300 * time.Millisecond)

	// Legacy: no reqId anywhere, end null.
	l, _ := rpDial(t, in, "")
	l.send(`{"type":"replay","topic":"chat","since":6}`)
	rpExpectAll(l,
		`{"topic":"__replay:chat","event":"msg","data":{"seq":7,"event":"e","data":{"id":7}}}`,
		`{"topic":"__replay:chat","event":"msg","data":{"seq":8,"event":"e","data":{"id":8}}}`,
		`{"topic":"__replay:chat","event":"end","data":null}`,
	)
	l.quiet(200 * time.Millisecond)
}

// §5.2-5.4, §9.22: after eviction (size 3) a replay ends truncated, and a
// resume from below the buffer first gets the truncation notice, then what
// is retained; truncation_notice off drops the notice (only on resume).
func TestReplayTruncation(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat {
			size 3
		}
		replay silent {
			size 3
			truncation_notice off
		}`))
	rpPublishN(t, in, "chat", 1, 9)
	rpPublishN(t, in, "silent", 1, 9)
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"replay","topic":"chat","since":5,"reqId":2}`)
	rpExpectAll(c,
		rpMsg("chat", "2", 7, "e", `{"id":7}`),
		rpMsg("chat", "2", 8, "e", `{"id":8}`),
		rpMsg("chat", "2", 9, "e", `{"id":9}`),
		`{"topic":"__replay:chat","event":"end","data":{"reqId":2,"truncated":true}}`,
	)
	// Exactly covered (the oldest retained is since+1): not truncated.
	c.send(`{"type":"replay","topic":"chat","since":6,"reqId":3}`)
	rpExpectAll(c,
		rpMsg("chat", "3", 7, "e", `{"id":7}`),
		rpMsg("chat", "3", 8, "e", `{"id":8}`),
		rpMsg("chat", "3", 9, "e", `{"id":9}`),
		rpEnd("chat", `{"reqId":3}`),
	)
	// The notice switch is about resume: replays still end truncated.
	c.send(`{"type":"replay","topic":"silent","since":0,"reqId":4}`)
	rpExpectAll(c,
		rpMsg("silent", "4", 7, "e", `{"id":7}`),
		rpMsg("silent", "4", 8, "e", `{"id":8}`),
		rpMsg("silent", "4", 9, "e", `{"id":9}`),
		rpEnd("silent", `{"reqId":4,"truncated":true}`),
	)
	// Legacy truncated end: {"truncated":true}.
	l, _ := rpDial(t, in, "")
	l.send(`{"type":"replay","topic":"chat","since":5}`)
	rpExpectAll(l,
		rpMsg("chat", "", 7, "e", `{"id":7}`),
		rpMsg("chat", "", 8, "e", `{"id":8}`),
		rpMsg("chat", "", 9, "e", `{"id":9}`),
		rpEnd("chat", `{"truncated":true}`),
	)

	// Resume from 5: notice, then 7..9, then subscribed.
	r, _ := rpDial(t, in, `["batch"]`)
	r.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":5,"silent":5}}`)
	r.send(`{"type":"subscribe-batch","topics":["chat","silent"],"ref":1}`)
	rpExpectAll(r,
		`{"type":"resumed"}`,
		rpTruncated("chat"),
		rpBatch(rpIDEnvs("chat", 7, 9)...),
		`{"type":"subscribed","topic":"chat","ref":1}`,
		rpBatch(rpIDEnvs("silent", 7, 9)...),
		`{"type":"subscribed","topic":"silent","ref":1}`,
	)
	r.quiet(200 * time.Millisecond)

	// Without the batch cap the notice and the events come as plain
	// frames. A resume from 6 is covered: no notice.
	p, _ := rpDial(t, in, `[]`)
	p.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":4}}`)
	p.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	rpExpectAll(p, append(append([]string{`{"type":"resumed"}`, rpTruncated("chat")}, rpIDEnvs("chat", 7, 9)...),
		`{"type":"subscribed","topic":"chat","ref":1}`)...)
	q, _ := rpDial(t, in, `["batch"]`)
	q.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":6}}`)
	q.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	rpExpectAll(q, `{"type":"resumed"}`, rpBatch(rpIDEnvs("chat", 7, 9)...), `{"type":"subscribed","topic":"chat","ref":1}`)
	q.quiet(200 * time.Millisecond)
}

// §5.4, §9.23: an unauthorized replay yields only end with denied; a since
// that is not an integer >= 0 yields only end; a legacy request ends with
// null (or {"denied":true}).
func TestReplayRequestDeniedAndInvalidSince(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		writeJSONAnswer(w, http.StatusOK, `{"chat-secret":false,"chat-plan":"PLAN_LOCKED"}`)
	})
	in := startCaddy(t, rpSite(`		replay chat*
		subscribe_hook `+app.url("/subscribe")))
	rpPublishN(t, in, "chat-secret", 1, 3)
	rpPublishN(t, in, "chat-plan", 1, 3)
	rpPublishN(t, in, "chat", 1, 3)
	c, _ := rpDial(t, in, `["batch"]`)
	for _, tc := range []struct{ frame, want string }{
		{`{"type":"replay","topic":"chat-secret","since":0,"reqId":2}`, rpEnd("chat-secret", `{"reqId":2,"denied":true}`)},
		{`{"type":"replay","topic":"chat-plan","since":0,"reqId":2}`, rpEnd("chat-plan", `{"reqId":2,"denied":true}`)},
		{`{"type":"replay","topic":"chat","since":-1,"reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","since":1.5,"reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","since":"1","reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","since":null,"reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","since":9007199254740993,"reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"chat","since":3,"reqId":2}`, rpEnd("chat", `{"reqId":2}`)},
		{`{"type":"replay","topic":"__replay:chat","since":0,"reqId":2}`, rpEnd("__replay:chat", `{"reqId":2,"denied":true}`)},
	} {
		c.send(tc.frame)
		if got := c.next(3 * time.Second); got != tc.want {
			t.Errorf("%s:\n got  %s\n want %s", tc.frame, got, tc.want)
		}
	}
	c.quiet(300 * time.Millisecond)

	// Legacy: no reqId.
	l, _ := rpDial(t, in, "")
	l.send(`{"type":"replay","topic":"chat-secret","since":0}`)
	l.expect(rpEnd("chat-secret", `{"denied":true}`))
	l.send(`{"type":"replay","topic":"chat","since":-1}`)
	l.expect(rpEnd("chat", `null`))
	l.send(`{"type":"replay","topic":"chat","since":2}`)
	l.expect(rpMsg("chat", "", 3, "e", `{"id":3}`))
	l.expect(rpEnd("chat", `null`))
	l.send(`{"type":"replay","topic":"chat","since":3}`)
	l.expect(rpEnd("chat", `null`))
	l.quiet(200 * time.Millisecond)
}

// §5.4, §9.24: while replays of a large buffer run, live events on the
// topic with seq above a replay's last replayed value do not reach the
// connection (which is also subscribed) before that replay's end, with
// publishes racing the replays; replays run one at a time, in order.
func TestReplayLiveEventsWaitForEnd(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	// Fill the buffer (1000 events) with one batch publish.
	var items []string
	for n := 1; n <= 1000; n++ {
		items = append(items, fmt.Sprintf(`{"topic":"chat","event":"e","data":{"id":%d}}`, n))
	}
	publish(t, in, "["+strings.Join(items, ",")+"]")

	c, _ := rpDial(t, in, `[]`)
	c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)

	const publishers, perPublisher, replays = 4, 150, 8
	const live = publishers * perPublisher
	var wg sync.WaitGroup
	errs := make(chan string, publishers)
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perPublisher; i++ {
				r := apiDo(http.MethodPost, in.url("/_realtime/publish"), "", `{"topic":"chat","event":"live","data":{}}`)
				if r.err != nil || r.status != http.StatusOK {
					errs <- fmt.Sprintf("live publish: %v %d %s", r.err, r.status, r.body)
					return
				}
			}
		}()
	}
	// Start the replays once live events flow, then read until the last
	// live event and the last end arrived.
	frames := []string{c.next(5 * time.Second)}
	for r := 1; r <= replays; r++ {
		c.send(fmt.Sprintf(`{"type":"replay","topic":"chat","since":0,"reqId":%d}`, r))
	}
	type frame struct {
		Topic string `json:"topic"`
		Event string `json:"event"`
		Seq   int    `json:"seq"`
		Data  struct {
			ReqID int `json:"reqId"`
			Seq   int `json:"seq"`
		} `json:"data"`
	}
	var parsed []frame
	lastLive, ends := 0, 0
	for {
		raw := frames[len(frames)-1]
		var f frame
		if err := json.Unmarshal([]byte(raw), &f); err != nil {
			t.Fatalf("frame %s: %v", raw, err)
		}
		parsed = append(parsed, f)
		switch {
		case f.Topic == "chat" && f.Event == "live":
			lastLive = f.Seq
		case f.Event == "end":
			ends++
		}
		if lastLive == 1000+live && ends == replays {
			break
		}
		frames = append(frames, c.next(10*time.Second))
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	// Live events: 1001..1000+live exactly once, in order. Replay r: msg
	// frames with reqId r and contiguous seqs (the 1000 retained), then one
	// end; replays in request order, never interleaved.
	wantLive, cur, replayed, first, last := 1001, 1, 0, 0, 0
	raced := 0
	for i, f := range parsed {
		switch {
		case f.Topic == "chat" && f.Event == "live":
			if f.Seq != wantLive {
				t.Fatalf("frame %d: live seq %d, want %d (no gaps, no duplicates)", i, f.Seq, wantLive)
			}
			wantLive++
			// The point of §9.24: while replay cur has begun and not
			// ended, no live event above its last replayed seq.
			if replayed > 0 && f.Seq > last {
				t.Fatalf("frame %d: live seq %d arrived inside replay %d (its msgs so far end at %d)", i, f.Seq, cur, last)
			}
		case f.Topic == "__replay:chat" && f.Event == "msg":
			if f.Data.ReqID != cur {
				t.Fatalf("frame %d: msg of reqId %d while replay %d runs: %s", i, f.Data.ReqID, cur, frames[i])
			}
			if replayed > 0 && f.Data.Seq != last+1 {
				t.Fatalf("frame %d: replayed seq %d after %d", i, f.Data.Seq, last)
			}
			if replayed == 0 {
				first = f.Data.Seq
			}
			last = f.Data.Seq
			replayed++
		case f.Topic == "__replay:chat" && f.Event == "end":
			if want := fmt.Sprintf(`{"topic":"__replay:chat","event":"end","data":{"reqId":%d,"truncated":true}}`, cur); frames[i] != want {
				t.Fatalf("frame %d: end %s, want %s", i, frames[i], want)
			}
			if replayed != 1000 || first != last-999 {
				t.Fatalf("replay %d sent %d msgs (%d..%d), want the 1000 retained", cur, replayed, first, last)
			}
			// Live events above last must follow this end; those at or
			// below it came before the replay.
			for _, g := range parsed[:i] {
				if g.Topic == "chat" && g.Event == "live" && g.Seq > last {
					t.Fatalf("replay %d ended at frame %d with last seq %d, but live seq %d came before its end", cur, i, last, g.Seq)
				}
			}
			if last > 1000 && last < 1000+live {
				raced++
			}
			cur, replayed = cur+1, 0
		default:
			t.Fatalf("frame %d: unexpected %s", i, frames[i])
		}
	}
	if cur != replays+1 {
		t.Fatalf("%d replays ended, want %d", cur-1, replays)
	}
	if raced == 0 {
		t.Logf("no replay ran while live events flowed; the ordering was not exercised")
	}
	t.Logf("%d of %d replays ran while %d live events were being published", raced, replays, live)
	c.quiet(200 * time.Millisecond)
}

// §3.1 rule 4: payloads come back byte for byte through live delivery,
// replay requests, resume gap fill and GET /replay.
func TestReplayPayloadsByteIdentical(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	payloads := []string{`[]`, `{}`, `9007199254740991`, `{"b":1,"a":2}`, `1.50e10`, `"\u00e9<&>"`, `-0`, `null`, `[{"x":[]}]`}
	live, _ := rpDial(t, in, `[]`)
	live.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	live.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	for i, p := range payloads {
		rpPublish(t, in, `{"topic":"chat","event":"p","data":`+p+`}`, fmt.Sprintf(`{"seq":%d}`, i+1))
		live.expect(rpEnv("chat", "p", p, i+1))
	}
	var events, msgs, envs []string
	for i, p := range payloads {
		events = append(events, rpEvent(i+1, "p", p))
		msgs = append(msgs, rpMsg("chat", "1", i+1, "p", p))
		envs = append(envs, rpEnv("chat", "p", p, i+1))
	}
	if a := rpGetReplay(t, in, "chat", "0"); a.Events != rpEvents(events...) {
		t.Errorf("GET /replay events:\n got  %s\n want %s", a.Events, rpEvents(events...))
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"replay","topic":"chat","since":0,"reqId":1}`)
	rpExpectAll(c, append(msgs, rpEnd("chat", `{"reqId":1}`))...)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":0}}`)
	c.send(`{"type":"subscribe","topic":"chat","ref":2}`)
	rpExpectAll(c, `{"type":"resumed"}`, rpBatch(envs...), `{"type":"subscribed","topic":"chat","ref":2}`)
	n, _ := rpDial(t, in, `[]`)
	n.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":0}}`)
	n.send(`{"type":"subscribe","topic":"chat","ref":2}`)
	rpExpectAll(n, append(append([]string{`{"type":"resumed"}`}, envs...), `{"type":"subscribed","topic":"chat","ref":2}`)...)
	l, _ := rpDial(t, in, "")
	l.send(`{"type":"replay","topic":"chat","since":2}`)
	for i := 2; i < len(payloads); i++ {
		l.expect(rpMsg("chat", "", i+1, "p", payloads[i]))
	}
	l.expect(rpEnd("chat", "null"))
}

// ttl: a buffered topic's events are dropped once it has gone ttl without
// a publish; GET /seq keeps the head, a resume reports truncation, and the
// counter continues.
func TestReplayTTL(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat {
			ttl 1s
		}`))
	rpPublishN(t, in, "chat", 1, 3)
	published := time.Now()
	if a := rpGetReplay(t, in, "chat", "0"); a.Events != rpEvents(rpEvent(1, "e", `{"id":1}`), rpEvent(2, "e", `{"id":2}`), rpEvent(3, "e", `{"id":3}`)) || a.Truncated || a.Seq != 3 {
		t.Fatalf("GET /replay right after publishing: %+v", a)
	}
	var gone rpAnswer
	waitFor(t, 5*time.Second, "the ttl to drop the events", func() bool {
		gone = rpGetReplay(t, in, "chat", "0")
		return gone.Events == "[]"
	})
	if el := time.Since(published); el < 900*time.Millisecond {
		t.Fatalf("events dropped %s after the last publish, before the 1s ttl", el)
	}
	if !gone.Truncated || gone.Seq != 3 {
		t.Fatalf("GET /replay after expiry: %+v, want no events, truncated, seq 3", gone)
	}
	if got := rpSeq(t, in, "chat"); got != `{"seq":3}` {
		t.Fatalf("GET /seq after expiry: %s, want {\"seq\":3}", got)
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"replay","topic":"chat","since":1,"reqId":1}`)
	c.expect(rpEnd("chat", `{"reqId":1,"truncated":true}`))
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":1}}`)
	c.send(`{"type":"subscribe","topic":"chat","ref":2}`)
	rpExpectAll(c, `{"type":"resumed"}`, rpTruncated("chat"), `{"type":"subscribed","topic":"chat","ref":2}`)
	rpPublishN(t, in, "chat", 4, 4)
	c.expect(rpIDEnv("chat", 4))
	c.quiet(200 * time.Millisecond)
}

// GET /replay?topic=T&since=N, DELETE /replay?topic=T, DELETE /replay and
// their errors.
func TestReplayAPI(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat*`))
	// A buffered topic nobody published to.
	if a := rpGetReplay(t, in, "chat", ""); a.Events != "[]" || a.Truncated || a.Seq != 0 {
		t.Fatalf("GET /replay of an empty buffered topic: %+v", a)
	}
	rpPublishN(t, in, "chat", 1, 4)
	rpPublishN(t, in, "chat-2", 1, 2)
	for _, tc := range []struct {
		since string
		want  rpAnswer
	}{
		{"", rpAnswer{rpEvents(rpEvent(1, "e", `{"id":1}`), rpEvent(2, "e", `{"id":2}`), rpEvent(3, "e", `{"id":3}`), rpEvent(4, "e", `{"id":4}`)), false, 4}},
		{"0", rpAnswer{rpEvents(rpEvent(1, "e", `{"id":1}`), rpEvent(2, "e", `{"id":2}`), rpEvent(3, "e", `{"id":3}`), rpEvent(4, "e", `{"id":4}`)), false, 4}},
		{"2", rpAnswer{rpEvents(rpEvent(3, "e", `{"id":3}`), rpEvent(4, "e", `{"id":4}`)), false, 4}},
		{"4", rpAnswer{"[]", false, 4}},
		{"99", rpAnswer{"[]", true, 4}}, // above the head: the store lost it
	} {
		if got := rpGetReplay(t, in, "chat", tc.since); got != tc.want {
			t.Errorf("GET /replay?topic=chat&since=%s: %+v, want %+v", tc.since, got, tc.want)
		}
	}
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/replay?topic=chat&since=3"), "", "")
	if want := `{"events":[{"seq":4,"event":"e","data":{"id":4}}],"seq":4,"truncated":false}`; status != http.StatusOK || body != want {
		t.Errorf("GET /replay?topic=chat&since=3: %d %s, want 200 %s", status, body, want)
	}

	// Errors.
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/replay?topic=news", http.StatusNotFound, "NO_REPLAY"},
		{http.MethodDelete, "/replay?topic=news", http.StatusNotFound, "NO_REPLAY"},
		{http.MethodGet, "/replay?topic=chat&since=abc", http.StatusBadRequest, "BAD_SINCE"},
		{http.MethodGet, "/replay?topic=chat&since=-1", http.StatusBadRequest, "BAD_SINCE"},
		{http.MethodGet, "/replay?topic=chat&since=1.5", http.StatusBadRequest, "BAD_SINCE"},
		{http.MethodGet, "/replay?topic=chat&since=%20", http.StatusBadRequest, "BAD_SINCE"},
		{http.MethodGet, "/replay", http.StatusBadRequest, "INVALID_TOPIC"},
		{http.MethodGet, "/replay?topic=__replay:chat", http.StatusBadRequest, "INVALID_TOPIC"},
		{http.MethodGet, "/replay?topic=" + url.QueryEscape(`a"b`), http.StatusBadRequest, "INVALID_TOPIC"},
		{http.MethodDelete, "/replay?topic=", http.StatusBadRequest, "INVALID_TOPIC"},
	} {
		status, body := apiCall(t, tc.method, in.url("/_realtime"+tc.path), "", "")
		wantAPIError(t, tc.method+" "+tc.path, status, body, tc.status, tc.code)
	}
	status, body = apiCall(t, http.MethodPost, in.url("/_realtime/replay?topic=chat"), "", "")
	wantAPIError(t, "POST /replay", status, body, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")

	// DELETE /replay?topic=T clears T only; its head stays and the next
	// publish continues the counter; a resume from before it is truncated.
	status, body = apiCall(t, http.MethodDelete, in.url("/_realtime/replay?topic=chat"), "", "")
	if status != http.StatusOK || body != `{}` {
		t.Fatalf("DELETE /replay?topic=chat: %d %s", status, body)
	}
	if a := rpGetReplay(t, in, "chat", "0"); a.Events != "[]" || !a.Truncated || a.Seq != 4 {
		t.Fatalf("GET /replay after DELETE: %+v, want no events, truncated, seq 4", a)
	}
	if a := rpGetReplay(t, in, "chat", "4"); a.Events != "[]" || a.Truncated || a.Seq != 4 {
		t.Fatalf("GET /replay?since=head after DELETE: %+v, want no events, not truncated", a)
	}
	if got := rpSeq(t, in, "chat"); got != `{"seq":4}` {
		t.Fatalf("GET /seq after DELETE: %s", got)
	}
	if a := rpGetReplay(t, in, "chat-2", "0"); a.Seq != 2 || a.Events != rpEvents(rpEvent(1, "e", `{"id":1}`), rpEvent(2, "e", `{"id":2}`)) {
		t.Fatalf("DELETE /replay?topic=chat touched chat-2: %+v", a)
	}
	rpPublishN(t, in, "chat", 5, 5)
	if a := rpGetReplay(t, in, "chat", "3"); a.Events != rpEvents(rpEvent(5, "e", `{"id":5}`)) || !a.Truncated || a.Seq != 5 {
		t.Fatalf("GET /replay?since=3 after DELETE and a publish: %+v, want [5], truncated", a)
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":2}}`)
	c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	rpExpectAll(c, `{"type":"resumed"}`, rpTruncated("chat"), rpIDEnv("chat", 5), `{"type":"subscribed","topic":"chat","ref":1}`)

	// DELETE /replay clears every buffer; counters stay, so the live
	// stream goes on gap-free and seqs never repeat.
	status, body = apiCall(t, http.MethodDelete, in.url("/_realtime/replay"), "", "")
	if status != http.StatusOK || body != `{}` {
		t.Fatalf("DELETE /replay: %d %s", status, body)
	}
	for topic, head := range map[string]int{"chat": 5, "chat-2": 2} {
		if got, want := rpSeq(t, in, topic), fmt.Sprintf(`{"seq":%d}`, head); got != want {
			t.Errorf("GET /seq?topic=%s after DELETE /replay: %s, want %s", topic, got, want)
		}
		if a := rpGetReplay(t, in, topic, "0"); a != (rpAnswer{"[]", true, uint64(head)}) {
			t.Errorf("GET /replay?topic=%s after DELETE /replay: %+v", topic, a)
		}
	}
	rpPublish(t, in, `{"topic":"chat","event":"e","data":{"id":6}}`, `{"seq":6}`)
	c.expect(rpIDEnv("chat", 6))
	rpPublish(t, in, `{"topic":"chat-2","event":"e","data":{"id":3}}`, `{"seq":3}`)
	c.quiet(200 * time.Millisecond)
}

// A resume gap fill and a replay request of a full default buffer (1000
// events of about 4 KB, 4 MB in all) reach a client that reads as fast as
// it can: the gateway must not treat its own burst as a slow consumer
// (close 1013 once more than max_backpressure, 1 MiB by default, is queued
// at once), or the client could never resume: it reconnects, resumes from
// the same seq and is closed again.
func TestReplayLargeBufferDoesNotCloseFastClient(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	pad := strings.Repeat("x", 4000)
	var items []string
	for n := 1; n <= 1000; n++ {
		items = append(items, fmt.Sprintf(`{"topic":"chat","event":"e","data":{"id":%d,"pad":"%s"}}`, n, pad))
	}
	for i := 0; i < len(items); i += 250 {
		publish(t, in, "["+strings.Join(items[i:i+250], ",")+"]")
	}
	if got := rpSeq(t, in, "chat"); got != `{"seq":1000}` {
		t.Fatalf("GET /seq: %s", got)
	}

	t.Run("resume", func(t *testing.T) {
		c, _ := rpDial(t, in, `["batch"]`)
		c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":0}}`)
		c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
		c.expect(`{"type":"resumed"}`)
		got := 0
		for got < 1000 {
			var f struct {
				Type   string            `json:"type"`
				Events []json.RawMessage `json:"events"`
				Seq    int               `json:"seq"`
			}
			raw := c.nextRaw(5 * time.Second)
			if err := json.Unmarshal([]byte(raw), &f); err != nil || f.Type != "batch" {
				t.Fatalf("after %d events: frame %.200s, want a batch frame", got, raw)
			}
			got += len(f.Events)
		}
		c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	})
	t.Run("replay", func(t *testing.T) {
		c, _ := rpDial(t, in, `["batch"]`)
		c.send(`{"type":"replay","topic":"chat","since":0,"reqId":1}`)
		// The msg frames may come in batch frames (§7.2); expect splits them.
		for n := 1; n <= 1000; n++ {
			c.expect(rpMsg("chat", "1", n, "e", fmt.Sprintf(`{"id":%d,"pad":"%s"}`, n, pad)))
		}
		c.expect(rpEnd("chat", `{"reqId":1}`))
	})
}

// §5.3 step 1, §8 ("lastSeenSeqs entries used: 1024"): a connection keeps
// at most 1024 pending resumes (handlers/conn.go documents its resumes map
// as "at most MaxLastSeen"). Two resume frames of 1024 distinct topics
// each must not leave 2048 pending entries: otherwise every further resume
// frame (up to 200 per second within the inbound rate) grows the
// connection's memory, and expired entries are never freed.
func TestReplayResumePendingEntriesBoundedAcrossResumeFrames(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
		limits {
			upgrade_rate off
			max_subscriptions 5000
		}
		replay r*
	}`)
	const per = 1024
	topics := make([]string, 0, 2*per)
	for _, prefix := range []string{"ra", "rb"} {
		for i := 0; i < per; i++ {
			topics = append(topics, fmt.Sprintf("%s%d", prefix, i))
		}
	}
	var items []string
	for _, topic := range topics {
		items = append(items, `{"topic":"`+topic+`","event":"e","data":1}`)
	}
	for i := 0; i < len(items); i += 512 {
		publish(t, in, "["+strings.Join(items[i:i+512], ",")+"]")
	}
	c, _ := rpDial(t, in, `[]`)
	for _, part := range [][]string{topics[:per], topics[per:]} {
		var b strings.Builder
		b.WriteString(`{"type":"resume","sessionId":"s","lastSeenSeqs":{`)
		for i, topic := range part {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"` + topic + `":0`)
		}
		b.WriteString(`}}`)
		c.send(b.String())
		c.expect(`{"type":"resumed"}`)
	}
	filled := 0
	for i := 0; i < len(topics); i += 256 {
		batch, _ := json.Marshal(topics[i : i+256])
		c.send(fmt.Sprintf(`{"type":"subscribe-batch","topics":%s,"ref":%d}`, batch, i))
		for _, topic := range topics[i : i+256] {
			got := c.next(3 * time.Second)
			if got == rpEnv(topic, "e", "1", 1) {
				filled++
				got = c.next(3 * time.Second)
			}
			if want := fmt.Sprintf(`{"type":"subscribed","topic":%q,"ref":%d}`, topic, i); got != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		}
	}
	if filled > rpMaxLastSeen {
		t.Fatalf("two resume frames of %d topics each gave %d gap fills: the connection held %d pending resumes, more than the %d entries a resume may use", per, filled, filled, rpMaxLastSeen)
	}
}

// rpMaxLastSeen is docs/protocol.md §8's bound on resume entries used.
const rpMaxLastSeen = 1024

// §7.2: a gap fill larger than one batch frame (256 KiB) is split into
// several batch frames, each within the limit, in seq order, all before
// subscribed; without the cap the same envelopes come one by one.
func TestReplayResumeGapFillSplitsBatches(t *testing.T) {
	in := startCaddy(t, rpSite(`		replay chat`))
	pad := strings.Repeat("y", 1000)
	var items []string
	for n := 1; n <= 300; n++ {
		items = append(items, fmt.Sprintf(`{"topic":"chat","event":"e","data":{"id":%d,"pad":"%s"}}`, n, pad))
	}
	publish(t, in, "["+strings.Join(items, ",")+"]")
	env := func(n int) string {
		return rpEnv("chat", "e", fmt.Sprintf(`{"id":%d,"pad":"%s"}`, n, pad), n)
	}
	c, _ := rpDial(t, in, `["batch"]`)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":0}}`)
	c.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	c.expect(`{"type":"resumed"}`)
	next, frames := 1, 0
	for next <= 300 {
		raw := c.nextRaw(3 * time.Second)
		if len(raw) > 256<<10 {
			t.Fatalf("batch frame of %d bytes, over 256 KiB", len(raw))
		}
		var f struct {
			Type   string            `json:"type"`
			Events []json.RawMessage `json:"events"`
		}
		if err := json.Unmarshal([]byte(raw), &f); err != nil || f.Type != "batch" || len(f.Events) < 2 {
			t.Fatalf("frame %.200s: want a batch frame of several envelopes", raw)
		}
		for _, e := range f.Events {
			if string(e) != env(next) {
				t.Fatalf("batch element %.120s, want seq %d", e, next)
			}
			next++
		}
		frames++
	}
	if frames < 2 {
		t.Fatalf("300 KB gap fill came in %d batch frame(s), want it split", frames)
	}
	c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)

	p, _ := rpDial(t, in, `[]`)
	p.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":290}}`)
	p.send(`{"type":"subscribe","topic":"chat","ref":1}`)
	p.expect(`{"type":"resumed"}`)
	for n := 291; n <= 300; n++ {
		p.expect(env(n))
	}
	p.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
}

// rpRSS returns the resident set size of in's Caddy process in bytes.
func rpRSS(t *testing.T, in *instance) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.cmd.Process.Pid))
	if err != nil {
		t.Skipf("reading the process status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Skip("no VmRSS in /proc/<pid>/status")
	return 0
}

// §8 (outbound queue per connection: 1 MiB, close 1013): replay frames
// may be exempt from max_backpressure for one burst, but a client that
// does not read and keeps sending replay requests (control frames, 200/s
// within the default inbound rate) must not make the gateway queue
// without bound: it must be closed as a slow consumer. Here 40 requests
// for a 4 MB buffer would queue 160 MB for one connection.
func TestReplayRequestsFromNonReadingClientStayBounded(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		shutdown_spread 0
		write_timeout 60s
		replay chat
	}`)
	pad := strings.Repeat("z", 4000)
	var items []string
	for n := 1; n <= 1000; n++ {
		items = append(items, fmt.Sprintf(`{"topic":"chat","event":"e","data":{"id":%d,"pad":"%s"}}`, n, pad))
	}
	for i := 0; i < len(items); i += 250 {
		publish(t, in, "["+strings.Join(items[i:i+250], ",")+"]")
	}
	before := rpRSS(t, in)
	// A client that never reads.
	ws, _, err := tryDial(in, dialOpts{origin: in.origin()})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	const requests = 40
	sent := 0
	for r := 1; r <= requests; r++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := ws.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"type":"replay","topic":"chat","since":0,"reqId":%d}`, r)))
		cancel()
		if err != nil {
			break // closed by the gateway: fine
		}
		sent++
	}
	// Either the gateway closes it as a slow consumer, or it stops
	// queueing (for example by running one replay at a time as the
	// client drains); what it must not do is hold every request's frames.
	closed := rpPoll(3*time.Second, func() bool { return strings.Contains(apiGetStats(t, in), `"connections":0`) })
	after := rpRSS(t, in)
	t.Logf("%d replay requests of a 4 MB buffer from a client that does not read: closed=%v, caddy RSS %d MB -> %d MB", sent, closed, before>>20, after>>20)
	if !closed && after-before > 64<<20 {
		t.Fatalf("after %d replay requests (about %d MB of frames) the non-reading client is still connected and the gateway's RSS grew from %d MB to %d MB: replay frames escape max_backpressure (1 MiB) without bound", sent, sent*4, before>>20, after>>20)
	}
}

// rpPoll polls cond every 10 ms, as waitFor does, and reports whether it
// held within timeout.
func rpPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// apiGetStats returns the GET /stats body.
func apiGetStats(t *testing.T, in *instance) string {
	t.Helper()
	_, body := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
	return body
}
