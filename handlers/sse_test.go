package handlers

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// sseEvent is one event (or comment) read from a stream.
type sseEvent struct {
	ID, Event, Data string
	HasID           bool
	Comment         string
}

// sseClient reads a stream, one event at a time, on its own goroutine.
type sseClient struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openSSE requests path (with its query) of srv with the headers given
// and, on a 200, starts reading events. The stream is closed at cleanup.
func openSSE(t testing.TB, srv *httptest.Server, path string, header http.Header) (*sseClient, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	c := &sseClient{t: t, resp: resp, events: make(chan sseEvent, 1024), cancel: cancel}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		return nil, resp
	}
	go c.readLoop()
	return c, resp
}

func (c *sseClient) readLoop() {
	defer close(c.events)
	r := bufio.NewReader(c.resp.Body)
	var ev sseEvent
	var data []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if data != nil || ev.Event != "" {
				ev.Data = strings.Join(data, "\n")
				c.events <- ev
			}
			ev, data = sseEvent{}, nil
		case strings.HasPrefix(line, ":"):
			c.events <- sseEvent{Comment: strings.TrimSpace(line[1:])}
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				ev.ID, ev.HasID = value, true
			case "event":
				ev.Event = value
			case "data":
				data = append(data, value)
			}
		}
	}
}

// next returns the next event, skipping comments; it fails the test after
// a timeout or at the end of the stream.
func (c *sseClient) next() sseEvent {
	c.t.Helper()
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				c.t.Fatal("the stream ended")
			}
			if ev.Comment != "" {
				continue
			}
			return ev
		case <-time.After(5 * time.Second):
			c.t.Fatal("no event within 5s")
		}
	}
}

// waitEnd waits for the stream to end, returning what came before.
func (c *sseClient) waitEnd() []sseEvent {
	c.t.Helper()
	var out []sseEvent
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				return out
			}
			out = append(out, ev)
		case <-timeout:
			c.t.Fatal("the stream did not end within 5s")
		}
	}
}

func publishOne(t testing.TB, g *Gateway, topic, event, data string) uint64 {
	t.Helper()
	seqs, err := g.Publish(context.Background(), []bus.Message{{Topic: topic, Event: event, Data: []byte(data)}})
	if err != nil {
		t.Fatalf("publishing on %s: %v", topic, err)
	}
	return seqs[0]
}

func sseTestConfig() Config {
	cfg := testConfig()
	cfg.SSEPath = "/events"
	cfg.Replay = []ReplayConfig{{Topics: "chat*", TruncationNotice: true}}
	return cfg
}

func TestSSEStreamsEnvelopesExactlyWithResumableIDs(t *testing.T) {
	g, srv := newTestGateway(t, sseTestConfig())
	c, resp := openSSE(t, srv, "/events?topic=chat&topic=other&topic=chat", nil)
	if c == nil {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
		t.Fatalf("Content-Type %q", ct)
	}
	key := sseTopicsKey([]string{"chat", "other"})
	welcome := c.next()
	if welcome.Event != "welcome" || !welcome.HasID || welcome.ID != "1:"+key+":0," {
		t.Fatalf("welcome event %+v, want event welcome with id 1:%s:0,", welcome, key)
	}
	var w inFrame
	if err := json.Unmarshal([]byte(welcome.Data), &w); err != nil || w.Type != "welcome" || w.SessionID == "" {
		t.Fatalf("welcome data %q", welcome.Data)
	}

	publishOne(t, g, "chat", "msg", `{"n":1}`)
	publishOne(t, g, "other", "msg", "{\r\n\"n\": 2\r\n}")
	publishOne(t, g, "chat", "msg", `{"n":3}`)
	want := []sseEvent{
		{Data: `{"topic":"chat","event":"msg","data":{"n":1},"seq":1}`, ID: "1:" + key + ":1,", HasID: true},
		// other has no replay buffer: its seq moves no id, and its line
		// breaks come as LF.
		{Data: "{\"topic\":\"other\",\"event\":\"msg\",\"data\":{\n\"n\": 2\n},\"seq\":1}"},
		{Data: `{"topic":"chat","event":"msg","data":{"n":3},"seq":2}`, ID: "1:" + key + ":2,", HasID: true},
	}
	for i, wev := range want {
		if ev := c.next(); ev != wev {
			t.Fatalf("event %d: %+v, want %+v", i, ev, wev)
		}
	}
	lastID := want[2].ID
	c.cancel()
	testsvc.WaitFor(t, 5*time.Second, "the stream to be gone", func() bool { return g.Stats().SSEConnections == 0 })

	publishOne(t, g, "chat", "msg", `{"n":4}`)
	publishOne(t, g, "chat", "msg", `{"n":5}`)
	c2, resp := openSSE(t, srv, "/events?topic=other&topic=chat", http.Header{"Last-Event-Id": {lastID}})
	if c2 == nil {
		t.Fatalf("resume: status %d", resp.StatusCode)
	}
	if ev := c2.next(); ev.Event != "welcome" || ev.ID != lastID {
		t.Fatalf("resumed welcome %+v, want the id it resumed from, %s", ev, lastID)
	}
	for _, m := range []struct{ n, seq string }{{"4", "3"}, {"5", "4"}} {
		ev := c2.next()
		wantData := `{"topic":"chat","event":"msg","data":{"n":` + m.n + `},"seq":` + m.seq + `}`
		if ev.Data != wantData || ev.ID != "1:"+key+":"+m.seq+"," {
			t.Fatalf("missed event %s: %+v, want data %s", m.n, ev, wantData)
		}
	}
	publishOne(t, g, "chat", "msg", `{"n":6}`)
	if ev := c2.next(); ev.ID != "1:"+key+":5," {
		t.Fatalf("live event after the resume: %+v", ev)
	}
}

func TestSSEUnfitLastEventIDIsTruncated(t *testing.T) {
	tests := []struct {
		name string
		id   string
	}{
		{"an id of another topic list", "1:0000000000000000:3,"},
		{"garbage", "hello"},
		{"an empty entry for a replayed topic", "1:" + sseTopicsKey([]string{"chat", "other"}) + ":,"},
		{"a seq beyond 2^53", "1:" + sseTopicsKey([]string{"chat", "other"}) + ":9007199254740992,"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, srv := newTestGateway(t, sseTestConfig())
			publishOne(t, g, "chat", "msg", `{"n":1}`)
			c, resp := openSSE(t, srv, "/events?topic=chat&topic=other", http.Header{"Last-Event-Id": {tt.id}})
			if c == nil {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if ev := c.next(); ev.Event != "welcome" {
				t.Fatalf("first event %+v", ev)
			}
			if ev := c.next(); ev.Data != `{"topic":"chat","event":"truncated","data":null}` || ev.HasID {
				t.Fatalf("got %+v, want the truncated notice for chat", ev)
			}
			publishOne(t, g, "chat", "msg", `{"n":2}`)
			if ev := c.next(); ev.Data != `{"topic":"chat","event":"msg","data":{"n":2},"seq":2}` {
				t.Fatalf("live event %+v", ev)
			}
		})
	}
}

func TestSSERefusals(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Topics []string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		out := map[string]any{}
		for _, t := range body.Topics {
			switch t {
			case "secret":
				out[t] = false
			case "broken":
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer hook.Close()
	cfg := sseTestConfig()
	cfg.SubscribeHook = &HookConfig{URL: hook.URL}
	cfg.Origins = []string{"https://app.example"}
	g, srv := newTestGateway(t, cfg)
	tests := []struct {
		name   string
		method string
		path   string
		origin string
		status int
	}{
		{"a POST is not a stream", http.MethodPost, "/events?topic=chat", "", http.StatusMethodNotAllowed},
		{"no topic", http.MethodGet, "/events", "", http.StatusBadRequest},
		{"a system topic", http.MethodGet, "/events?topic=__realtime", "", http.StatusBadRequest},
		{"an invalid topic", http.MethodGet, "/events?topic=" + url.QueryEscape(`a"b`), "", http.StatusBadRequest},
		{"a topic the subscribe hook denies", http.MethodGet, "/events?topic=chat&topic=secret", "", http.StatusForbidden},
		{"a subscribe hook that fails", http.MethodGet, "/events?topic=broken", "", http.StatusServiceUnavailable},
		{"an origin the policy refuses", http.MethodGet, "/events?topic=chat", "https://evil.example", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
		})
	}
	if n := g.Stats().Connections; n != 0 {
		t.Fatalf("%d connections left by refused streams", n)
	}
	// An allowed origin gets the CORS headers a cross-origin EventSource needs.
	c, resp := openSSE(t, srv, "/events?topic=chat", http.Header{"Origin": {"https://app.example"}})
	if c == nil {
		t.Fatalf("allowed origin: status %d", resp.StatusCode)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" || resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("CORS headers %v", resp.Header)
	}
}

func TestSSEKeepAliveComment(t *testing.T) {
	clock := testsvc.NewClock()
	cfg := sseTestConfig()
	cfg.Now = clock.Now
	_, srv := newTestGateway(t, cfg)
	c, resp := openSSE(t, srv, "/events?topic=chat", nil)
	if c == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ev := c.next(); ev.Event != "welcome" {
		t.Fatalf("first event %+v", ev)
	}
	clock.Advance(DefaultSSEKeepAlive - time.Second)
	select {
	case ev := <-c.events:
		t.Fatalf("%+v before the quiet period passed", ev)
	case <-time.After(1500 * time.Millisecond): // the sweeper's tick is 1s
	}
	clock.Advance(time.Second)
	select {
	case ev := <-c.events:
		if ev.Comment != "keep-alive" {
			t.Fatalf("got %+v, want the keep-alive comment", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no keep-alive comment")
	}
}

func TestSSECloseEndsTheStreamWithACloseEvent(t *testing.T) {
	t.Run("the gateway closing", func(t *testing.T) {
		g, srv := newTestGateway(t, sseTestConfig())
		c, _ := openSSE(t, srv, "/events?topic=chat", nil)
		c.next()
		go func() { _ = g.Close(context.Background()) }()
		evs := c.waitEnd()
		if len(evs) == 0 || evs[len(evs)-1].Event != "close" || evs[len(evs)-1].Data != `{"code":1001,"reason":"Server shutting down"}` {
			t.Fatalf("events before the end: %+v", evs)
		}
	})
	t.Run("the server unloading", func(t *testing.T) {
		g, err := New(sseTestConfig(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		unload := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			g.ServeHTTPUntil(w, r, unload)
		}))
		defer func() { _ = g.Close(context.Background()); srv.Close() }()
		c, _ := openSSE(t, srv, "/events?topic=chat", nil)
		c.next()
		close(unload)
		evs := c.waitEnd()
		if len(evs) == 0 || evs[len(evs)-1].Event != "close" {
			t.Fatalf("events before the end: %+v", evs)
		}
		testsvc.WaitFor(t, 5*time.Second, "the stream to be unregistered", func() bool { return g.Stats().Connections == 0 })
	})
	t.Run("the application disconnecting it", func(t *testing.T) {
		g, srv := newTestGateway(t, sseTestConfig())
		c, _ := openSSE(t, srv, "/events?topic=chat", nil)
		var w inFrame
		_ = json.Unmarshal([]byte(c.next().Data), &w)
		conn := g.conns.get(w.SessionID)
		if conn == nil {
			t.Fatal("the welcome's session id names no connection")
		}
		conn.closeWith(4403, "Forbidden")
		evs := c.waitEnd()
		if len(evs) == 0 || evs[len(evs)-1].Data != `{"code":4403,"reason":"Forbidden"}` {
			t.Fatalf("events before the end: %+v", evs)
		}
	})
}

func TestSSESlowConsumerIsClosed(t *testing.T) {
	cfg := sseTestConfig()
	cfg.MaxBackpressure = 64 << 10
	cfg.WriteTimeout = 300 * time.Millisecond
	g, srv := newTestGateway(t, cfg)
	// A client that never reads past the headers.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/events?topic=flood", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data := `"` + strings.Repeat("x", 16<<10) + `"`
	deadline := time.Now().Add(10 * time.Second)
	for g.Stats().SSEConnections > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream of a client that reads nothing is still open")
		}
		publishOne(t, g, "flood", "e", data)
	}
}

func TestParseSSEID(t *testing.T) {
	key := sseTopicsKey([]string{"a", "b", "c"})
	tests := []struct {
		name  string
		id    string
		ok    bool
		seqs  []uint64
		known []bool
	}{
		{"every entry", "1:" + key + ":1,20,300", true, []uint64{1, 20, 300}, []bool{true, true, true}},
		{"empty entries are unknown", "1:" + key + ":,0,", true, []uint64{0, 0, 0}, []bool{false, true, false}},
		{"too few entries", "1:" + key + ":1,2", false, nil, nil},
		{"too many entries", "1:" + key + ":1,2,3,4", false, nil, nil},
		{"another version", "2:" + key + ":1,2,3", false, nil, nil},
		{"another key", "1:" + sseTopicsKey([]string{"a", "b"}) + ":1,2,3", false, nil, nil},
		{"a negative seq", "1:" + key + ":-1,2,3", false, nil, nil},
		{"a leading zero", "1:" + key + ":01,2,3", false, nil, nil},
		{"a seq beyond 2^53", "1:" + key + ":9007199254740992,2,3", false, nil, nil},
		{"no separators", "garbage", false, nil, nil},
		{"too long", "1:" + key + ":" + strings.Repeat("1", maxLastEventID), false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seqs, known, ok := parseSSEID(tt.id, key, 3)
			if ok != tt.ok {
				t.Fatalf("ok %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			for i := range tt.seqs {
				if seqs[i] != tt.seqs[i] || known[i] != tt.known[i] {
					t.Fatalf("entry %d: %d/%v, want %d/%v", i, seqs[i], known[i], tt.seqs[i], tt.known[i])
				}
			}
		})
	}
	// What appendID writes, parseSSEID reads.
	st := newSSEStream(nil, []string{"a", "b", "c"})
	st.seqs[0], st.known[0] = 7, true
	st.seqs[2], st.known[2] = 1<<53-1, true
	seqs, known, ok := parseSSEID(string(st.appendID(nil)), key, 3)
	if !ok || seqs[0] != 7 || known[1] || seqs[2] != 1<<53-1 {
		t.Fatalf("round trip of %s: %v %v %v", st.appendID(nil), seqs, known, ok)
	}
}

func TestEnvelopeSeq(t *testing.T) {
	tests := []struct {
		name string
		env  []byte
		want uint64
	}{
		{"a stamped envelope", wire.AppendEnvelope(nil, "t", "e", []byte(`{"a":1}`), 42), 42},
		{"no seq", wire.AppendEnvelope(nil, "t", "e", []byte(`{"a":1}`), 0), 0},
		{"data that ends like a seq member", wire.AppendEnvelope(nil, "t", "e", []byte(`{"x":1,"seq":5}`), 0), 0},
		{"numeric data", wire.AppendEnvelope(nil, "t", "e", []byte(`5`), 0), 0},
		{"data ending like a seq, stamped", wire.AppendEnvelope(nil, "t", "e", []byte(`{"seq":5}`), 6), 6},
		{"not an object", []byte(`x`), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := envelopeSeq(tt.env); got != tt.want {
				t.Fatalf("envelopeSeq(%s) = %d, want %d", tt.env, got, tt.want)
			}
		})
	}
}

func FuzzParseSSEID(f *testing.F) {
	key := sseTopicsKey([]string{"a", "b"})
	for _, s := range []string{"1:" + key + ":1,2", "1:" + key + ":,", "", ":", "1::", "1:" + key + ":99999999999999999999,1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		seqs, known, ok := parseSSEID(id, key, 2)
		if !ok {
			return
		}
		st := newSSEStream(nil, []string{"a", "b"})
		copy(st.seqs, seqs)
		copy(st.known, known)
		if again := string(st.appendID(nil)); again != id {
			t.Fatalf("parsed %q, which writes back as %q", id, again)
		}
	})
}

func TestConfigValidateSSEPath(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"a path of its own is fine", Config{SSEPath: "/events"}, ""},
		{"the websocket path is refused", Config{SSEPath: "/ws"}, `sse path "/ws" must differ`},
		{"the auth path is refused", Config{SSEPath: "/auth", AuthPath: "/auth"}, `sse path "/auth" must differ`},
		{"a path under the api is refused", Config{SSEPath: "/_rt/events", APIPath: "/_rt"}, "lie outside the api and dashboard paths"},
		{"a path under the dashboard is refused", Config{SSEPath: "/_dash/events", DashboardPath: "/_dash"}, "lie outside the api and dashboard paths"},
		{"a relative path is refused", Config{SSEPath: "events"}, "sse path must start with '/'"},
		{"a keepalive out of range is refused", Config{SSEPath: "/events", SSEKeepAlive: time.Second}, "sse keepalive must be between 5s and 120s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.WithDefaults().Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// A client that drops its stream every few events and reconnects with its
// last id, while a publisher never pauses, sees every seq once, in order.
func TestSSEResumeUnderConcurrentPublishesIsGapFree(t *testing.T) {
	g, srv := newTestGateway(t, sseTestConfig())
	const total = 300
	done := make(chan error, 1)
	// A stream without an id starts at the head: the publisher starts
	// once the first stream is open.
	first, resp := openSSE(t, srv, "/events?topic=chat", nil)
	if first == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	welcome := first.next()
	first.cancel()
	go func() {
		for i := 1; i <= total; i++ {
			if _, err := g.Publish(context.Background(), []bus.Message{{Topic: "chat", Event: "m", Data: []byte("1")}}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var seqs []uint64
	lastID := welcome.ID
	for reconnects := 0; len(seqs) < total; reconnects++ {
		if reconnects > total {
			t.Fatalf("no progress: %d events after %d reconnects", len(seqs), reconnects)
		}
		var h http.Header
		if lastID != "" {
			h = http.Header{"Last-Event-Id": {lastID}}
		}
		c, resp := openSSE(t, srv, "/events?topic=chat", h)
		if c == nil {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if ev := c.next(); ev.Event != "welcome" {
			t.Fatalf("first event %+v", ev)
		}
		for k := 0; k < 7 && len(seqs) < total; k++ {
			ev := c.next()
			var f inFrame
			if err := json.Unmarshal([]byte(ev.Data), &f); err != nil || f.Topic != "chat" {
				t.Fatalf("event %+v", ev)
			}
			seqs = append(seqs, f.Seq)
			lastID = ev.ID
		}
		c.cancel()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("event %d has seq %d: %v", i, s, seqs[max(0, i-3):min(len(seqs), i+3)])
		}
	}
}

func TestSSEAuthHook(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie("session")
		if err != nil || ck.Value != "ann" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: "seen", Value: "1"})
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"ann"}`)
	}))
	defer hook.Close()
	cfg := sseTestConfig()
	cfg.Auth = &HookConfig{URL: hook.URL}
	g, srv := newTestGateway(t, cfg)
	if _, resp := openSSE(t, srv, "/events?topic=chat", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without the cookie: status %d, want 401", resp.StatusCode)
	}
	c, resp := openSSE(t, srv, "/events?topic=chat", http.Header{"Cookie": {"session=ann"}})
	if c == nil {
		t.Fatalf("with the cookie: status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Set-Cookie"); !strings.HasPrefix(got, "seen=1") {
		t.Fatalf("Set-Cookie %q, want the hook's", got)
	}
	c.next()
	// The identity names the user: a send to ann reaches the stream.
	if n := len(g.conns.user("ann")); n != 1 {
		t.Fatalf("%d connections of ann, want 1", n)
	}
}

// Over HTTP/2 a write deadline that passes resets the stream, written to
// or not: a stream quiet for longer than write_timeout must live on.
func TestSSEIdleHTTP2StreamOutlivesTheWriteTimeout(t *testing.T) {
	cfg := sseTestConfig()
	cfg.Name = "test-h2"
	cfg.WriteTimeout = 200 * time.Millisecond
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.ServeHTTP(w, r) {
			http.NotFound(w, r)
		}
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer func() { _ = g.Close(context.Background()); srv.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events?topic=chat", nil)
	client := srv.Client()
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %d, want an HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	c := &sseClient{t: t, resp: resp, events: make(chan sseEvent, 64), cancel: cancel}
	go c.readLoop()
	c.next() // welcome
	select {
	case ev, ok := <-c.events:
		t.Fatalf("while idle: %+v (open %v)", ev, ok)
	case <-time.After(4 * cfg.WriteTimeout):
	}
	publishOne(t, g, "chat", "m", "1")
	if ev := c.next(); ev.Data != `{"topic":"chat","event":"m","data":1,"seq":1}` {
		t.Fatalf("after the idle period: %+v", ev)
	}
}
