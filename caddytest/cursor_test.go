package caddytest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"
)

// cursorEntry is one decoded cursor entry {"key","user","data"}.
type cursorEntry struct {
	Key  string          `json:"key"`
	User json.RawMessage `json:"user"`
	Data json.RawMessage `json:"data"`
}

// cursorEntryJSON is the exact encoding of an entry.
func cursorEntryJSON(key, user, data string) string {
	return `{"key":"` + key + `","user":` + user + `,"data":` + data + `}`
}

func cursorFrame(topic, event, data string) string {
	return `{"topic":"__cursor:` + topic + `","event":"` + event + `","data":` + data + `}`
}

// cursorSnap sends cursor-snapshot for topic and expects the snapshot data.
func cursorSnap(c *wsClient, topic, want string) {
	c.t.Helper()
	c.send(`{"type":"cursor-snapshot","topic":"` + topic + `"}`)
	c.expect(cursorFrame(topic, "snapshot", want))
}

func cursorMoveTo(c *wsClient, topic, data string) {
	c.t.Helper()
	c.send(`{"type":"cursor","topic":"` + topic + `","data":` + data + `}`)
}

func cursorsAPI(t testing.TB, in *instance, topic string) (int, string) {
	t.Helper()
	return apiCall(t, http.MethodGet, in.url("/_realtime/cursors?topic="+topic), "", "")
}

// §9.6, §2.4: a cursor-snapshot before hello is answered with snapshot,
// and the later hello takes effect (presence in the current vocabulary);
// repeats are answered each time; an unauthorized snapshot is dropped.
func TestCursorSnapshotBeforeHello(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		presence room
		cursor canvas {
			throttle off
		}`))
	c, id := featDial(t, in, "ann")
	cursorSnap(c, "canvas", `[]`)
	featHello(c)
	c.send(`{"type":"subscribe","topic":"room","ref":1}`)
	c.expect(`{"topic":"__presence:room","event":"presence_state","data":{"u1":` + featAnn + `}}`)
	c.expect(`{"type":"subscribed","topic":"room","ref":1}`)
	featQuietExcept(c, `{"topic":"__presence:room","event":"presence_diff","data":{"joins":{"u1":`+featAnn+`},"leaves":{}}}`, 250*time.Millisecond)

	cursorMoveTo(c, "canvas", `{"x":1,"y":2}`)
	entry := cursorEntryJSON(id, featAnn, `{"x":1,"y":2}`)
	c.expect(cursorFrame("canvas", "update", entry))
	cursorSnap(c, "canvas", `[`+entry+`]`) // repeats are answered, with the live entries

	// A second client gets the entries in its snapshot, before hello too.
	b, _ := featDial(t, in, "bo")
	cursorSnap(b, "canvas", `[`+entry+`]`)

	// An unauthorized snapshot is dropped: no frame at all.
	out, _ := featDial(t, in, "outsider")
	out.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	featSync(out)
	cursorMoveTo(out, "canvas", `{"x":9}`) // not attached either: dropped
	featSync(out)
	out.quiet(100 * time.Millisecond)
	c.quiet(100 * time.Millisecond)
}

// §3.2 rule 4: cursor and cursor-snapshot frames on a topic without
// cursors are application messages (forwarded byte-exact); on a cursor
// topic they are control frames, never forwarded.
func TestCursorFramesOnNonCursorTopicAreAppMessages(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle off
		}`))
	c, id := featDial(t, in, "ann")
	featHello(c)
	cursorSnap(c, "canvas", `[]`)
	sent := []string{
		`{"type":"cursor","topic":"plain","data":{"x":1}}`,
		`{"type":"cursor-snapshot","topic":"plain"}`,
		`{"type":"cursor","topic":"__cursor:canvas","data":{"x":2}}`,
	}
	c.send(sent[0])
	cursorMoveTo(c, "canvas", `{"x":3}`) // control frame: not forwarded
	c.expect(cursorFrame("canvas", "update", cursorEntryJSON(id, featAnn, `{"x":3}`)))
	c.send(sent[1])
	c.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	c.expect(cursorFrame("canvas", "snapshot", `[`+cursorEntryJSON(id, featAnn, `{"x":3}`)+`]`))
	c.send(sent[2])
	waitFor(t, 5*time.Second, "three application messages", func() bool { return len(app.messageBodies()) >= 3 })
	featSync(c)
	msgs := app.messageBodies()
	if len(msgs) != 3 {
		t.Fatalf("message hook got %d messages, want 3: %v", len(msgs), msgs)
	}
	for i, m := range msgs {
		var b struct {
			Connection string `json:"connection"`
			Data       string `json:"data"`
		}
		if err := json.Unmarshal([]byte(m), &b); err != nil || b.Data != sent[i] || b.Connection != id {
			t.Errorf("message %d: %s, want data %s from %s", i, m, sent[i], id)
		}
	}
}

// §9.31: two attached movers within one flush interval produce one bulk
// frame with both entries; one mover produces update; a close produces
// remove, and no update for that key follows it.
func TestCursorUpdateBulkRemove(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle off
			topic_throttle 300ms
		}`))
	a, aid := featDial(t, in, "ann")
	b, bid := featDial(t, in, "bo")
	d, did := featDial(t, in, "dee")
	o, _ := featDial(t, in, "cy")
	for _, c := range []*wsClient{a, b, d, o} {
		featHello(c)
		cursorSnap(c, "canvas", `[]`)
	}

	// One mover after an idle interval: update at once.
	cursorMoveTo(a, "canvas", `{"x":1}`)
	upd := cursorFrame("canvas", "update", cursorEntryJSON(aid, featAnn, `{"x":1}`))
	o.expect(upd)
	a.expect(upd) // attached movers get their own frames too
	start := time.Now()

	// Two movers within the interval: one bulk with both entries.
	cursorMoveTo(b, "canvas", `{"x":2}`)
	cursorMoveTo(a, "canvas", `{"x":3}`)
	f := featNextEvent(o, "__cursor:canvas", "bulk")
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Errorf("bulk %s after the update, want about the 300ms flush interval", el)
	}
	var es []cursorEntry
	if err := json.Unmarshal(f.Data, &es); err != nil || len(es) != 2 {
		t.Fatalf("bulk data %s, want two entries", f.Data)
	}
	got := map[string]string{}
	for _, e := range es {
		got[e.Key] = string(e.User) + " " + string(e.Data)
	}
	want := map[string]string{aid: featAnn + ` {"x":3}`, bid: featBo + ` {"x":2}`}
	if !maps.Equal(got, want) {
		t.Fatalf("bulk entries %v, want %v", got, want)
	}
	featNextEvent(a, "__cursor:canvas", "bulk")
	for _, c := range []*wsClient{b, d} {
		c.expect(upd)
		featNextEvent(c, "__cursor:canvas", "bulk")
	}

	// A move held for the next flush, then a close: remove, and never the
	// held update.
	cursorMoveTo(d, "canvas", `{"x":4}`)
	featSync(d)
	featClose(d)
	o.expect(cursorFrame("canvas", "remove", `{"key":"`+did+`"}`))
	o.quiet(500 * time.Millisecond)

	featClose(a)
	o.expect(cursorFrame("canvas", "remove", `{"key":"`+aid+`"}`))
	b.expect(cursorFrame("canvas", "remove", `{"key":"`+did+`"}`))
	b.expect(cursorFrame("canvas", "remove", `{"key":"`+aid+`"}`))
	// A connection that only attached (never moved) leaves no remove.
	featClose(o)
	b.quiet(400 * time.Millisecond)
}

// The per-connection throttle: a burst of moves gives a leading update
// and one trailing update with the last data, nothing in between; a close
// while the trailing update is pending gives remove and no update.
func TestCursorThrottleLeadingAndTrailing(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle 200ms
			topic_throttle 16ms
		}`))
	a, aid := featDial(t, in, "ann")
	o, _ := featDial(t, in, "cy")
	featHello(a)
	featHello(o)
	cursorSnap(a, "canvas", `[]`)
	cursorSnap(o, "canvas", `[]`)
	for i := 0; i < 10; i++ {
		cursorMoveTo(a, "canvas", fmt.Sprintf(`{"i":%d}`, i))
	}
	o.expect(cursorFrame("canvas", "update", cursorEntryJSON(aid, featAnn, `{"i":0}`)))
	start := time.Now()
	o.expect(cursorFrame("canvas", "update", cursorEntryJSON(aid, featAnn, `{"i":9}`)))
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("trailing update %s after the leading one, want about 200ms", el)
	}
	o.quiet(400 * time.Millisecond)

	// Leading update, then a held move, then close before it is due.
	d, did := featDial(t, in, "dee")
	featHello(d)
	cursorSnap(d, "canvas", `[`+cursorEntryJSON(aid, featAnn, `{"i":9}`)+`]`)
	cursorMoveTo(d, "canvas", `{"d":1}`)
	o.expect(cursorFrame("canvas", "update", cursorEntryJSON(did, featDee, `{"d":1}`)))
	d.expect(cursorFrame("canvas", "update", cursorEntryJSON(did, featDee, `{"d":1}`)))
	cursorMoveTo(d, "canvas", `{"d":2}`)
	featSync(d)
	featClose(d)
	o.expect(cursorFrame("canvas", "remove", `{"key":"`+did+`"}`))
	o.quiet(400 * time.Millisecond)
}

// Cursor data over max_data is dropped, as is a move from a connection
// that never attached; neither reaches the message hook.
func TestCursorDropsOversizedAndUnattached(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor small {
			throttle off
			topic_throttle 16ms
			max_data 64
		}`))
	a, aid := featDial(t, in, "ann")
	o, _ := featDial(t, in, "cy")
	u, _ := featDial(t, in, "bo")
	for _, c := range []*wsClient{a, o, u} {
		featHello(c)
	}
	cursorSnap(a, "small", `[]`)
	cursorSnap(o, "small", `[]`)
	data := func(n int) string {
		s := `{"s":"` + strings.Repeat("a", n-8) + `"}`
		if len(s) != n {
			t.Fatalf("built %d bytes, want %d", len(s), n)
		}
		return s
	}
	cursorMoveTo(a, "small", data(65))
	featSync(a)
	cursorMoveTo(a, "small", data(64))
	o.expect(cursorFrame("small", "update", cursorEntryJSON(aid, featAnn, data(64))))

	cursorMoveTo(u, "small", `{"x":1}`) // never attached
	featSync(u)
	o.quiet(200 * time.Millisecond)
	status, body := cursorsAPI(t, in, "small")
	if status != http.StatusOK || body != `{"cursors":[`+cursorEntryJSON(aid, featAnn, data(64))+`]}` {
		t.Fatalf("GET /cursors: %d %s, want only a's entry", status, body)
	}
	if m := app.messageBodies(); len(m) != 0 {
		t.Fatalf("cursor frames reached the message hook: %v", m)
	}
}

// §4.3, §6.2: a __cursor:<t> subscribe attaches (legacy and current): the
// current entries as one bulk (nothing if empty), then every frame;
// unsubscribing stops delivery. Unknown or unauthorized topics are denied.
func TestCursorLegacyAttach(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle off
			topic_throttle 16ms
		}`))
	l, _ := featDial(t, in, "bo")
	l.send(`{"type":"subscribe","topic":"__cursor:canvas"}`)
	featSync(l) // empty: no bulk before the ack

	a, aid := featDial(t, in, "ann")
	featHello(a)
	cursorSnap(a, "canvas", `[]`)
	cursorMoveTo(a, "canvas", `{"x":1}`)
	e1 := cursorEntryJSON(aid, featAnn, `{"x":1}`)
	l.expect(cursorFrame("canvas", "update", e1))
	a.expect(cursorFrame("canvas", "update", e1))

	l2, l2id := featDial(t, in, "dee")
	l2.send(`{"type":"subscribe","topic":"__cursor:canvas"}`)
	l2.expect(cursorFrame("canvas", "bulk", `[`+e1+`]`))

	// A current client may attach by subscribe too.
	c, _ := featDial(t, in, "cy")
	featHello(c)
	c.send(`{"type":"subscribe","topic":"__cursor:canvas","ref":1}`)
	c.expect(cursorFrame("canvas", "bulk", `[`+e1+`]`))
	c.expect(`{"type":"subscribed","topic":"__cursor:canvas","ref":1}`)
	c.send(`{"type":"subscribe","topic":"__cursor:nocursors","ref":2}`)
	c.expect(`{"type":"subscribe-denied","topic":"__cursor:nocursors","ref":2,"reason":"INVALID_TOPIC"}`)
	out, _ := featDial(t, in, "outsider")
	out.send(`{"type":"subscribe","topic":"__cursor:canvas","ref":3}`)
	out.expect(`{"type":"subscribe-denied","topic":"__cursor:canvas","ref":3,"reason":"NOT_IN_ROOM"}`)

	// A legacy attached connection moves too.
	cursorMoveTo(l2, "canvas", `{"l":2}`)
	e2 := cursorEntryJSON(l2id, featDee, `{"l":2}`)
	for _, x := range []*wsClient{a, l, l2, c} {
		x.expect(cursorFrame("canvas", "update", e2))
	}

	l.send(`{"type":"unsubscribe","topic":"__cursor:canvas"}`)
	featSync(l)
	cursorMoveTo(a, "canvas", `{"x":3}`)
	e3 := cursorEntryJSON(aid, featAnn, `{"x":3}`)
	l2.expect(cursorFrame("canvas", "update", e3))
	c.expect(cursorFrame("canvas", "update", e3))
	// A detached connection's moves are dropped.
	cursorMoveTo(l, "canvas", `{"gone":true}`)
	featSync(l)
	featClose(a)
	l2.expect(cursorFrame("canvas", "remove", `{"key":"`+aid+`"}`))
	l.quiet(300 * time.Millisecond)
	l2.quiet(50 * time.Millisecond)
}

// An entry's user is the presence-style projection of the identity:
// secrets stripped at every depth by default; select keeps only the
// listed fields.
func TestCursorUserProjection(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle off
			topic_throttle 16ms
		}
		cursor named {
			throttle off
			topic_throttle 16ms
			select name
		}`))
	o, _ := featDial(t, in, "cy")
	featHello(o)
	cursorSnap(o, "canvas", `[]`)
	cursorSnap(o, "named", `[]`)
	a, aid := featDial(t, in, "ann")
	featHello(a)
	cursorSnap(a, "canvas", `[]`)
	cursorMoveTo(a, "canvas", `{"x":1}`)
	o.expect(cursorFrame("canvas", "update", cursorEntryJSON(aid, `{"id":"u1","name":"Ann"}`, `{"x":1}`)))
	n, nid := featDial(t, in, "nested")
	cursorSnap(n, "canvas", `[`+cursorEntryJSON(aid, featAnn, `{"x":1}`)+`]`)
	cursorMoveTo(n, "canvas", `{"x":2}`)
	o.expect(cursorFrame("canvas", "update", cursorEntryJSON(nid, `{"id":"u5","profile":{"city":"y"},"list":[{"n":1}]}`, `{"x":2}`)))

	featNextEvent(a, "__cursor:canvas", "update")
	featNextEvent(a, "__cursor:canvas", "update")
	cursorSnap(a, "named", `[]`)
	cursorMoveTo(a, "named", `{"y":1}`)
	o.expect(cursorFrame("named", "update", cursorEntryJSON(aid, `{"name":"Ann"}`, `{"y":1}`)))
}

// GET /cursors lists the live entries of a cursor topic.
func TestCursorAPI(t *testing.T) {
	app := newFeatApp(t)
	in := startFeat(t, featSite(app, `
		cursor canvas {
			throttle off
		}`))
	if status, body := cursorsAPI(t, in, "canvas"); status != http.StatusOK || body != `{"cursors":[]}` {
		t.Fatalf("empty: %d %s", status, body)
	}
	a, aid := featDial(t, in, "ann")
	cursorSnap(a, "canvas", `[]`)
	cursorMoveTo(a, "canvas", `{"x":1}`)
	e := cursorEntryJSON(aid, featAnn, `{"x":1}`)
	a.expect(cursorFrame("canvas", "update", e))
	if status, body := cursorsAPI(t, in, "canvas"); status != http.StatusOK || body != `{"cursors":[`+e+`]}` {
		t.Fatalf("one entry: %d %s", status, body)
	}
	b, bid := featDial(t, in, "bo")
	cursorSnap(b, "canvas", `[`+e+`]`)
	cursorMoveTo(b, "canvas", `{"x":2}`)
	featNextEvent(b, "__cursor:canvas", "update")
	status, body := cursorsAPI(t, in, "canvas")
	var got struct{ Cursors []cursorEntry }
	if status != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || len(got.Cursors) != 2 {
		t.Fatalf("two entries: %d %s", status, body)
	}
	keys := map[string]bool{got.Cursors[0].Key: true, got.Cursors[1].Key: true}
	if !keys[aid] || !keys[bid] {
		t.Fatalf("GET /cursors %s, want entries of %s and %s", body, aid, bid)
	}
	featClose(a)
	waitFor(t, 3*time.Second, "a's entry to go", func() bool {
		_, body := cursorsAPI(t, in, "canvas")
		return body == `{"cursors":[`+cursorEntryJSON(bid, featBo, `{"x":2}`)+`]}`
	})
	for _, tc := range []struct {
		topic  string
		status int
		code   string
	}{
		{"other", 404, "NO_CURSORS"},
		{"__cursor:canvas", 400, "INVALID_TOPIC"},
		{"", 400, "INVALID_TOPIC"},
	} {
		status, body := cursorsAPI(t, in, tc.topic)
		var e struct{ Code string }
		_ = json.Unmarshal([]byte(body), &e)
		if status != tc.status || e.Code != tc.code {
			t.Errorf("GET /cursors?topic=%s: %d %s, want %d %s", tc.topic, status, body, tc.status, tc.code)
		}
	}
}
