package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// Fault tests: each drives real processes into one fault and
// asserts what a user relies on through it. The README's fault matrix
// lists them.

// health reads GET /health on in: the status and the bus's state.
func health(t testing.TB, in *instance) (status, bus string) {
	t.Helper()
	code, body := apiCall(t, http.MethodGet, in.url("/_realtime/health"), "", "")
	var h struct {
		Status string `json:"status"`
		Bus    struct {
			State string `json:"state"`
		} `json:"bus"`
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("health: %d %s: %v", code, body, err)
	}
	return h.Status, h.Bus.State
}

// publishOnceUp retries a publish until the gateway accepts it (a backend
// coming back) and returns its seq.
func publishOnceUp(t *testing.T, in *instance, body, what string) uint64 {
	t.Helper()
	var seq uint64
	waitFor(t, 20*time.Second, what, func() bool {
		code, resp := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", body)
		if code != http.StatusOK {
			return false
		}
		var r struct{ Seq uint64 }
		_ = json.Unmarshal([]byte(resp), &r)
		seq = r.Seq
		return true
	})
	return seq
}

// sees reports whether c receives a frame containing want within d,
// skipping others.
func sees(c *wsClient, want string, d time.Duration) bool {
	for len(c.pending) > 0 { // the rest of a batch frame next split
		f := c.pending[0]
		c.pending = c.pending[1:]
		if strings.Contains(f, want) {
			return true
		}
	}
	deadline := time.After(d)
	for {
		select {
		case f := <-c.frames:
			if strings.Contains(string(f), want) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// presenceDiffs reads c's presence_diff frames until the connections ids
// all appear in their joins or leaves (kind), failing after d or if the
// connection never appears there.
func presenceDiffs(t *testing.T, c *wsClient, kind string, d time.Duration, never string, ids ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want["__conn:"+id] = true
	}
	deadline := time.Now().Add(d)
	for len(want) > 0 {
		raw := c.next(time.Until(deadline))
		var f struct {
			Event string                                `json:"event"`
			Data  map[string]map[string]json.RawMessage `json:"data"`
		}
		if json.Unmarshal([]byte(raw), &f) != nil || f.Event != "presence_diff" {
			continue
		}
		for k := range f.Data[kind] {
			if never != "" && k == "__conn:"+never {
				t.Fatalf("%s in %s: %s", k, kind, raw)
			}
			delete(want, k)
		}
	}
}

// Redis down when Caddy starts: Caddy starts anyway and serves its own
// clients, /health says degraded, and once Redis appears the instance
// joins the cluster without a restart.
func TestFaultRedisUnreachableAtStartup(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill() // its port is known, and nothing listens there
	global := fmt.Sprintf("\trealtime {\n\t\tredis redis://%s\n\t}", srv.Addr())
	start := time.Now()
	a := startCaddyWith(t, global, clusterSite)
	t.Logf("caddy listening %s after start with redis down", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(a.logs.String(), "redis unreachable at start-up") {
		t.Fatalf("no warning about redis at start-up in the log:\n%s", a.logs.String())
	}
	base := takeBaseline(t, a)
	if status, bus := health(t, a); status != "degraded" || bus != "unreachable" {
		t.Fatalf("health %s, bus %s; want degraded, unreachable", status, bus)
	}
	c := subscribedLegacy(t, a, "news")
	publish(t, a, `{"topic":"news","event":"local","data":1,"seq":false}`)
	c.expect(`{"topic":"news","event":"local","data":1}`)
	// A topic whose replay buffer lives in Redis cannot be stamped: the
	// publish is refused, not lost silently.
	if code, body := apiCall(t, http.MethodPost, a.url("/_realtime/publish"), "", `{"topic":"chat","event":"m","data":1}`); code != http.StatusServiceUnavailable {
		t.Fatalf("publish to a redis-replayed topic with redis down: %d %s, want 503", code, body)
	}

	srv.Restart()
	up := time.Now()
	waitFor(t, 15*time.Second, "health ok once redis is up", func() bool {
		status, _ := health(t, a)
		return status == "ok"
	})
	if !sees(c, `"topic":"__realtime","event":"recovered"`, 5*time.Second) {
		t.Fatal("the client was not told recovered")
	}
	b := startCaddyWith(t, global, clusterSite)
	waitFor(t, 10*time.Second, "a publish on a second instance to reach the first's client", func() bool {
		publish(t, b, `{"topic":"news","event":"remote","data":2,"seq":false}`)
		return sees(c, `"event":"remote"`, 200*time.Millisecond)
	})
	t.Logf("cluster delivery %s after redis appeared", time.Since(up).Round(time.Millisecond))
	if !strings.Contains(a.logs.String(), "connected to redis") {
		t.Fatal("no info line when redis was reached")
	}
	// The redis-replayed topic works again, across instances.
	ch := subscribedLegacy(t, a, "chat")
	if got := publish(t, b, `{"topic":"chat","event":"m","data":1}`); got != `{"seq":1}` {
		t.Fatalf("publish to the redis-replayed topic after redis appeared: %s", got)
	}
	if e := nextEnvelope(t, ch); e.Seq != 1 {
		t.Fatalf("seq %d on the first instance, want 1", e.Seq)
	}
	closeAll(c, ch)
	base.settle(t, 10*time.Second)
}

// Redis down when Caddy starts with every Redis-backed rule (presence,
// cursors, groups, rate limits, replay): Caddy starts, /health names the
// backends it cannot reach, a member who subscribes meanwhile stays
// subscribed, and once Redis appears the member is joined and listed on
// another instance, without a restart.
func TestFaultRedisUnreachableAtStartupWithEveryRule(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill()
	global := fmt.Sprintf("\trealtime {\n\t\tredis redis://%s\n\t}", srv.Addr())
	a, err := tryStartCaddy(t, global, clusterExtSite)
	if err != nil {
		t.Fatalf("Caddy did not start with redis down and every rule: %v\n%s", err, a.logs.String())
	}
	h := healthBody(t, a)
	if h.Status != "degraded" || h.Bus.State != "unreachable" || !slices.Contains(h.Unreachable, "presence room*") {
		t.Fatalf("health with redis down: %+v; want degraded, the bus and presence room* unreachable", h)
	}
	m := dial(t, a)
	m.welcome()
	current(m)
	m.send(`{"type":"subscribe","topic":"room1","ref":1}`)
	m.expect(`{"type":"subscribed","topic":"room1","ref":1}`)

	srv.Restart()
	waitFor(t, 15*time.Second, "health ok once redis is up", func() bool {
		h := healthBody(t, a)
		return h.Status == "ok" && len(h.Unreachable) == 0
	})
	b := startCaddyWith(t, global, clusterExtSite)
	waitFor(t, 15*time.Second, "the member who subscribed during the outage, listed on the other instance", func() bool {
		return len(presenceMembers(t, b, "room1")) == 1
	})
	// And the member itself is told it is present.
	if !sees(m, `"topic":"__presence:room1","event":"presence_state"`, 5*time.Second) {
		t.Fatal("the member got no presence_state once joined")
	}
}

// healthBody reads GET /health.
func healthBody(t testing.TB, in *instance) (h struct {
	Status string `json:"status"`
	Bus    struct {
		State string `json:"state"`
	} `json:"bus"`
	Unreachable []string `json:"unreachable"`
}) {
	t.Helper()
	code, body := apiCall(t, http.MethodGet, in.url("/_realtime/health"), "", "")
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("health: %d %s: %v", code, body, err)
	}
	return h
}

// Postgres killed under `store postgres`: publishes to the durable topic
// answer 503 BACKEND_UNAVAILABLE promptly instead of hanging, clients stay
// connected, and after the restart publishes succeed with seqs that
// continue from before the crash; a client resumes across the outage.
func TestFaultPostgresRestart(t *testing.T) {
	pg := testsvc.StartPostgres(t)
	global := fmt.Sprintf("\trealtime {\n\t\tpostgres %s\n\t}", pg.URL())
	in := startCaddyWith(t, global, `
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat {
			store postgres
			size 100
		}
	}`)
	base := takeBaseline(t, in)
	c := subscribedLegacy(t, in, "chat")
	for i := 1; i <= 3; i++ {
		if got := publish(t, in, fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i)); got != fmt.Sprintf(`{"seq":%d}`, i) {
			t.Fatalf("publish %d answered %s", i, got)
		}
		c.expect(fmt.Sprintf(`{"topic":"chat","event":"m","data":%d,"seq":%d}`, i, i))
	}

	pg.Kill()
	for i := 0; i < 3; i++ {
		start := time.Now()
		code, body := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", `{"topic":"chat","event":"m","data":"lost"}`)
		took := time.Since(start)
		wantAPIError(t, "publish with postgres down", code, body, http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE")
		if took > 6*time.Second {
			t.Fatalf("publish with postgres down took %s", took)
		}
	}
	// A topic without a durable buffer is unaffected.
	n := subscribedLegacy(t, in, "news")
	publish(t, in, `{"topic":"news","event":"e","data":1}`)
	n.expect(`{"topic":"news","event":"e","data":1,"seq":1}`)
	c.quiet(200 * time.Millisecond) // still connected, nothing half-published

	pg.Restart()
	seq := publishOnceUp(t, in, `{"topic":"chat","event":"m","data":4}`, "a publish to succeed after the restart")
	if seq != 4 {
		t.Fatalf("first seq after the restart %d, want 4 (no gap, never backwards)", seq)
	}
	c.expect(`{"topic":"chat","event":"m","data":4,"seq":4}`)
	select {
	case <-c.closed:
		t.Fatalf("the client was disconnected by the outage: %v", c.err)
	default:
	}
	d := dial(t, in)
	d.welcome()
	d.send(`{"type":"hello","caps":[]}`)
	d.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":2}}`)
	d.send(`{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
	d.expect(`{"type":"resumed"}`)
	d.expect(`{"topic":"chat","event":"m","data":3,"seq":3}`)
	d.expect(`{"topic":"chat","event":"m","data":4,"seq":4}`)
	d.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	closeAll(c, n, d)
	base.settle(t, 10*time.Second)
}

// Postgres unreachable when Caddy starts, under `store postgres`: Caddy
// starts anyway (the store creates its tables on first use), publishes to
// the durable topic answer 503 BACKEND_UNAVAILABLE promptly while other
// topics work, and once Postgres answers the durable topic's seqs start at
// 1 with nothing counted for the refused publishes.
func TestFaultPostgresUnreachableAtStartup(t *testing.T) {
	pg := testsvc.StartPostgres(t)
	pg.Kill()
	global := fmt.Sprintf("\trealtime {\n\t\tpostgres %s\n\t}", pg.URL())
	// A table name that is no identifier still refuses the start: it is
	// checked without the database.
	bad, err := tryStartCaddy(t, global, `
	realtime {
		replay chat {
			store postgres
			table chat-log
		}
	}`)
	if err == nil {
		t.Fatal("Caddy started with the replay table chat-log")
	}
	if !strings.Contains(bad.logs.String(), "is not an identifier") {
		t.Fatalf("the start error does not name the table:\n%s", bad.logs.String())
	}
	in := startCaddyWith(t, global, `
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat {
			store postgres
		}
	}`)
	base := takeBaseline(t, in)
	c := subscribedLegacy(t, in, "chat")
	for i := 0; i < 3; i++ {
		start := time.Now()
		code, body := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", `{"topic":"chat","event":"m","data":"refused"}`)
		took := time.Since(start)
		wantAPIError(t, "publish with postgres unreachable since start-up", code, body, http.StatusServiceUnavailable, "BACKEND_UNAVAILABLE")
		if took > 3*time.Second {
			t.Fatalf("publish with postgres unreachable took %s", took)
		}
	}
	n := subscribedLegacy(t, in, "news")
	publish(t, in, `{"topic":"news","event":"e","data":1}`)
	n.expect(`{"topic":"news","event":"e","data":1,"seq":1}`)
	c.quiet(200 * time.Millisecond) // nothing of the refused publishes

	pg.Restart()
	seq := publishOnceUp(t, in, `{"topic":"chat","event":"m","data":1}`, "a publish to succeed once postgres answers")
	if seq != 1 {
		t.Fatalf("first seq once postgres answers %d, want 1", seq)
	}
	c.expect(`{"topic":"chat","event":"m","data":1,"seq":1}`)
	if got := publish(t, in, `{"topic":"chat","event":"m","data":2}`); got != `{"seq":2}` {
		t.Fatalf("second publish answered %s", got)
	}
	c.expect(`{"topic":"chat","event":"m","data":2,"seq":2}`)
	closeAll(c, n)
	base.settle(t, 10*time.Second)
}

// SIGKILL of one of three instances: the others broadcast its users'
// presence leaves within ttl plus a margin, its group memberships stop
// counting on the others within member_ttl plus a margin, and the
// survivors keep delivering to each other meanwhile.
func TestFaultGatewaySIGKILLOneOfThree(t *testing.T) {
	cl := startCluster(t, 3, clusterExtSite)
	dead, b, c := cl.nodes[0], cl.nodes[1], cl.nodes[2]
	baseB, baseC := takeBaseline(t, b), takeBaseline(t, c)
	watcher := dial(t, b)
	watcher.welcome()
	watcher.send(`{"type":"hello","caps":["batch"]}`)
	watcher.send(`{"type":"subscribe","topic":"__presence:room","ref":1}`)
	onC := subscribedLegacy(t, c, "news")

	joinLobby := func(in *instance) (*wsClient, string) {
		w := dial(t, in)
		id := w.welcome()
		w.send(`{"type":"subscribe","topic":"room","ref":1}`)
		w.send(`{"type":"subscribe","topic":"__group:lobby","ref":2}`)
		return w, id
	}
	var doomed []string
	for i := 0; i < 3; i++ {
		_, id := joinLobby(dead)
		doomed = append(doomed, id)
	}
	survivorConn, survivor := joinLobby(c)
	presenceDiffs(t, watcher, "joins", 10*time.Second, "", append(doomed, survivor)...)
	waitFor(t, 5*time.Second, "4 lobby members seen from every survivor", func() bool {
		return getGroup(t, b, "lobby").Count == 4 && getGroup(t, c, "lobby").Count == 4
	})

	start := time.Now()
	_ = dead.cmd.Process.Kill()
	// ttl 3s, heartbeat 1s: leaves within ttl plus two heartbeats.
	const bound = 3*time.Second + 2*time.Second + 2*time.Second
	presenceDiffs(t, watcher, "leaves", bound, survivor, doomed...)
	t.Logf("presence leaves of the dead instance's %d members after %s", len(doomed), time.Since(start).Round(10*time.Millisecond))
	if took := time.Since(start); took > bound {
		t.Fatalf("leaves took %s, want within %s", took, bound)
	}
	if m := presenceMembers(t, b, "room"); len(m) != 1 || m["__conn:"+survivor] == nil {
		t.Fatalf("members after the reaping: %v, want only the survivor", m)
	}
	// member_ttl 3s: the dead instance's memberships stop counting.
	waitFor(t, bound, "the dead instance's group memberships to disappear", func() bool {
		return getGroup(t, b, "lobby").Count == 1 && getGroup(t, c, "lobby").Count == 1
	})
	t.Logf("group count back to 1 after %s", time.Since(start).Round(10*time.Millisecond))
	// The survivors deliver to each other, and a freed place can be taken.
	publish(t, b, `{"topic":"news","event":"after","data":1,"seq":false}`)
	if !sees(onC, `"event":"after"`, 5*time.Second) {
		t.Fatal("a publish on a survivor did not reach a client of the other survivor")
	}
	late := dial(t, b)
	late.welcome()
	late.send(`{"type":"subscribe","topic":"__group:lobby","ref":1}`)
	if !sees(late, `{"type":"subscribed","topic":"__group:lobby","ref":1}`, 5*time.Second) {
		t.Fatal("a new member could not join after the reaping")
	}
	closeAll(watcher, onC, survivorConn, late)
	baseB.settle(t, 10*time.Second)
	baseC.settle(t, 10*time.Second)
}

// hangingServer accepts TCP connections and never answers: an application
// that hangs below HTTP, where no request context can end its handler.
func hangingServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String()
}

// writeEndless answers 200 and streams a body until the reader goes away.
func writeEndless(w http.ResponseWriter, c hookReq) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	chunk := []byte(`{"id":"` + strings.Repeat("x", 64<<10))
	for c.ctx.Err() == nil {
		if _, err := w.Write(chunk); err != nil {
			return
		}
		chunk = bytes.Repeat([]byte("x"), 64<<10)
	}
}

// An auth hook that hangs refuses upgrades with 504 within its timeout,
// even many at once, and the instance keeps serving.
func TestFaultHookAuthHangs(t *testing.T) {
	hang := hangingServer(t)
	in := startCaddy(t, `
	realtime {
		api /_realtime
		auth `+hang+`/auth {
			timeout 500ms
		}
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
	}`)
	base := takeBaseline(t, in)
	start := time.Now()
	var wg sync.WaitGroup
	statuses := make(chan int, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, resp, err := tryDial(in, dialOpts{origin: in.origin()})
			switch {
			case err == nil:
				c.CloseNow()
				statuses <- resp.StatusCode
			case resp != nil:
				statuses <- resp.StatusCode
			default:
				statuses <- -1
			}
		}()
	}
	wg.Wait()
	close(statuses)
	took := time.Since(start)
	for s := range statuses {
		if s != http.StatusGatewayTimeout {
			t.Fatalf("upgrade against a hung auth hook: %d, want 504", s)
		}
	}
	t.Logf("20 concurrent upgrades refused with 504 in %s (hook timeout 500ms)", took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Fatalf("refusing took %s with a 500ms hook timeout", took)
	}
	if status, _ := health(t, in); status != "ok" {
		t.Fatalf("health %s after the hung hook", status)
	}
	base.settle(t, 10*time.Second)
}

// Garbage from the application is refused with a clear status and never
// takes the gateway down: an auth answer of the wrong type, not JSON, too
// large or endless gives 502; a message hook answering that way, or
// hanging, costs only that message: the connection's later messages, its
// subscriptions and other connections carry on.
func TestFaultHookGarbageAnswers(t *testing.T) {
	hugeID := `{"id":"` + strings.Repeat("x", 8<<20) + `"}`
	app := newApp(t, func(w http.ResponseWriter, c hookReq) {
		if c.Path == "/auth" {
			u, _ := url.Parse(c.Header.Get("X-Forwarded-Uri"))
			switch u.Query().Get("case") {
			case "huge":
				writeJSONAnswer(w, http.StatusOK, hugeID)
			case "endless":
				writeEndless(w, c)
			case "number":
				writeJSONAnswer(w, http.StatusOK, `42`)
			case "html":
				w.Header().Set("Content-Type", "text/html")
				_, _ = io.WriteString(w, "<html>login</html>")
			default:
				writeJSONAnswer(w, http.StatusOK, `{"id":"u"}`)
			}
			return
		}
		var m msgHookBody
		_ = json.Unmarshal(c.Body, &m)
		switch d := *m.Data; d {
		case "hang":
			<-c.ctx.Done()
		case "notjson":
			writeJSONAnswer(w, http.StatusOK, `{oops`)
		case "wrongtype":
			writeJSONAnswer(w, http.StatusOK, `{"publish":"room","reply":5,"close":"now"}`)
		case "array":
			writeJSONAnswer(w, http.StatusOK, `[{"topic":"room"}]`)
		case "huge":
			writeJSONAnswer(w, http.StatusOK, `{"reply":{"topic":"me","event":"x","data":"`+strings.Repeat("x", 8<<20)+`"}}`)
		case "endless":
			writeEndless(w, c)
		case "error":
			writeJSONAnswer(w, http.StatusInternalServerError, `{"error":"boom"}`)
		default:
			writeJSONAnswer(w, http.StatusOK, `{"reply":{"topic":"me","event":"ack","data":"`+d+`"}}`)
		}
	})
	in := startCaddy(t, `
	realtime {
		api /_realtime
		auth `+app.url("/auth")+` {
			timeout 2s
		}
		message_hook `+app.url("/message")+` {
			timeout 500ms
		}
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
	}`)
	base := takeBaseline(t, in)
	for _, tc := range []string{"huge", "endless", "number", "html"} {
		start := time.Now()
		if status, _ := dialStatus(t, in, "/ws?case="+tc, nil); status != http.StatusBadGateway {
			t.Fatalf("auth answer %s: upgrade got %d, want 502", tc, status)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("auth answer %s took %s to refuse", tc, took)
		}
	}

	sender := dial(t, in)
	sender.welcome()
	sender.send(`{"type":"subscribe","topic":"room","ref":1}`)
	sender.expect(`{"type":"subscribed","topic":"room","ref":1}`)
	other := dial(t, in)
	other.welcome()
	for _, garbage := range []string{"hang", "notjson", "wrongtype", "array", "huge", "endless", "error"} {
		sender.send(garbage)
		other.send("other-" + garbage)
		other.expect(`{"topic":"me","event":"ack","data":"other-` + garbage + `"}`)
		sender.send("after-" + garbage)
		var got string
		for {
			got = sender.next(5 * time.Second)
			if !strings.Contains(got, `"event":"x"`) { // a huge reply, if ever delivered, is not the point
				break
			}
		}
		if got != `{"topic":"me","event":"ack","data":"after-`+garbage+`"}` {
			t.Fatalf("after a %s answer the sender got %s, want the ack of its next message", garbage, got)
		}
	}
	publish(t, in, `{"topic":"room","event":"still","data":1}`)
	sender.expect(`{"topic":"room","event":"still","data":1,"seq":1}`)
	if status, _ := health(t, in); status != "ok" {
		t.Fatalf("health %s after the garbage", status)
	}
	select {
	case <-in.done:
		t.Fatalf("caddy exited: %v", in.err)
	default:
	}
	closeAll(sender, other)
	base.settle(t, 10*time.Second)
}

// procMetrics reads the Caddy process's goroutine count and heap in use
// from the admin /metrics; gc first forces a collection through the admin
// pprof endpoint, so the heap figure is what is live.
func procMetrics(t testing.TB, in *instance, gc bool) (goroutines, heap float64) {
	t.Helper()
	admin := adminClient(in)
	if gc {
		resp, err := admin.Get("http://admin/debug/pprof/heap?gc=1")
		if err != nil {
			t.Fatalf("forcing a GC: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := admin.Get("http://admin/metrics")
	if err != nil {
		t.Fatalf("reading metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			fmt.Sscan(v, &goroutines)
		}
		if v, ok := strings.CutPrefix(l, "go_memstats_heap_inuse_bytes "); ok {
			fmt.Sscan(v, &heap)
		}
	}
	if goroutines == 0 || heap == 0 {
		t.Fatal("no go_goroutines or go_memstats_heap_inuse_bytes in the admin metrics")
	}
	return goroutines, heap
}

// baseline is an instance's goroutine count and live heap before a fault.
type baseline struct {
	in               *instance
	goroutines, heap float64
}

// takeBaseline records in's figures; call it once the instance has
// settled, before the clients of the fault connect.
func takeBaseline(t testing.TB, in *instance) baseline {
	t.Helper()
	g, h := procMetrics(t, in, true)
	return baseline{in: in, goroutines: g, heap: h}
}

// Leak bounds: goroutines back within a handful of the baseline (idle
// keep-alive API connections, a backend's reconnected pipe), the live heap
// within twice the baseline plus 8 MiB (allocator caches, grown maps).
const (
	leakGoroutineSlack = 15
	leakHeapFactor     = 2
	leakHeapSlack      = 8 << 20
)

// settle waits until the instance's goroutines and heap are back near the
// baseline once the fault's clients have left, and reports the figures.
func (b baseline) settle(t testing.TB, within time.Duration) {
	t.Helper()
	http.DefaultClient.CloseIdleConnections() // ours hold server goroutines
	var g, h float64
	deadline := time.Now().Add(within)
	for {
		g, h = procMetrics(t, b.in, true)
		if g <= b.goroutines+leakGoroutineSlack && h <= leakHeapFactor*b.heap+leakHeapSlack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v goroutines (baseline %v), heap %.1f MiB (baseline %.1f MiB)",
				within, g, b.goroutines, h/(1<<20), b.heap/(1<<20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("settled: %v goroutines (baseline %v), heap %.1f MiB (baseline %.1f MiB)", g, b.goroutines, h/(1<<20), b.heap/(1<<20))
}

// closeAll disconnects test clients and waits for their read loops.
func closeAll(cs ...*wsClient) {
	for _, c := range cs {
		c.c.CloseNow()
	}
	for _, c := range cs {
		<-c.closed
	}
}

// stormClient is a light client for thousands of connections: it keeps
// only the last seq seen on its topic and the first ordering error.
type stormClient struct {
	session string
	conn    *websocket.Conn
	last    atomic.Uint64
	resumed atomic.Bool
	at      atomic.Int64 // when resumed arrived, Unix nanoseconds
	bad     atomic.Pointer[string]
	closed  chan struct{}
}

// read consumes frames until the connection ends, checking that the
// topic's seqs arrive contiguous: one miss or duplicate is recorded.
func (s *stormClient) read(topic string) {
	defer close(s.closed)
	for {
		_, b, err := s.conn.Read(context.Background())
		if err != nil {
			return
		}
		var f struct {
			Type      string `json:"type"`
			Topic     string `json:"topic"`
			Seq       uint64 `json:"seq"`
			SessionID string `json:"sessionId"`
		}
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		switch {
		case f.Type == "welcome":
			s.session = f.SessionID
		case f.Type == "resumed":
			s.at.Store(time.Now().UnixNano())
			s.resumed.Store(true)
		case f.Topic == topic && f.Seq != 0:
			if want := s.last.Load() + 1; f.Seq != want {
				msg := fmt.Sprintf("seq %d after %d", f.Seq, want-1)
				s.bad.CompareAndSwap(nil, &msg)
			}
			s.last.Store(f.Seq)
		}
	}
}

// stormDial connects to in, retrying refused or reset attempts for a few
// seconds as a real client's backoff would, sends first (the frames after
// the welcome) and starts the reader.
func stormDial(in *instance, topic string, first ...string) (*stormClient, error) {
	var (
		conn *websocket.Conn
		err  error
	)
	for attempt := 0; attempt < 50; attempt++ {
		if conn, _, err = tryDial(in, dialOpts{origin: in.origin()}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	s := &stormClient{conn: conn, closed: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, f := range first {
		if err := conn.Write(ctx, websocket.MessageText, []byte(f)); err != nil {
			conn.CloseNow()
			return nil, err
		}
	}
	return s, nil
}

// raiseFDLimit lifts the soft RLIMIT_NOFILE to n (bounded by the hard
// limit) for the test process and the Caddy processes it starts after:
// Go raises its own soft limit at start but restores the original one in
// children unless the program sets it itself.
func raiseFDLimit(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < n {
		t.Skipf("the hard file descriptor limit %d is below the %d this test needs", lim.Max, n)
	}
	lim.Cur = max(lim.Cur, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

// A reconnect storm: 3000 clients on one instance, which stops gracefully
// (1001, all at once); every client reconnects at the same moment to the
// other instance and resumes its replayed topic. All are back within the
// bound, none misses or repeats an event published before, during or
// after the storm, and once they leave the instance's goroutines and heap
// return to their baseline.
func TestFaultReconnectStorm(t *testing.T) {
	const n = 3000
	raiseFDLimit(t, 3*n+1000)
	cl := startCluster(t, 2, `
	realtime {
		api /_realtime
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
		replay chat {
			store redis
			size 1000
		}
	}`)
	a, b := cl.nodes[0], cl.nodes[1]
	base := takeBaseline(t, b)

	clients := make([]*stormClient, n)
	var (
		wg      sync.WaitGroup
		dialErr atomic.Pointer[error]
	)
	sem := make(chan struct{}, 200)
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := stormDial(a, "chat", `{"type":"hello","caps":[]}`, `{"type":"subscribe","topic":"chat","ref":1}`)
			if err != nil {
				dialErr.CompareAndSwap(nil, &err)
				return
			}
			clients[i] = s
			go s.read("chat")
		}()
	}
	wg.Wait()
	if p := dialErr.Load(); p != nil {
		t.Fatalf("connecting %d clients: %v", n, *p)
	}
	t.Cleanup(func() {
		for _, s := range clients {
			s.conn.CloseNow()
		}
	})
	waitFor(t, 30*time.Second, "every subscription", func() bool {
		_, body := apiCall(t, http.MethodGet, a.url("/_realtime/stats"), "", "")
		return strings.Contains(body, fmt.Sprintf(`"subscriptions":%d`, n))
	})
	t.Logf("%d clients connected and subscribed in %s", n, time.Since(start).Round(time.Millisecond))

	var seq atomic.Uint64
	pub := func(in *instance) {
		code, body := apiCall(t, http.MethodPost, in.url("/_realtime/publish"), "", `{"topic":"chat","event":"m","data":1}`)
		var r struct{ Seq uint64 }
		if code != http.StatusOK || json.Unmarshal([]byte(body), &r) != nil {
			t.Errorf("publish: %d %s", code, body)
			return
		}
		seq.Store(r.Seq)
	}
	for i := 0; i < 5; i++ {
		pub(a)
	}
	waitFor(t, 20*time.Second, "every client to see the first events", func() bool {
		for _, s := range clients {
			if s.last.Load() != seq.Load() {
				return false
			}
		}
		return true
	})

	// During the storm, events keep coming through the surviving instance.
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			pub(b)
		}
	}()
	stormStart := time.Now()
	// Each client reconnects the moment its connection ends.
	moved := make([]*stormClient, n)
	for i, s := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-s.closed
			resume := fmt.Sprintf(`{"type":"resume","sessionId":%q,"lastSeenSeqs":{"chat":%d}}`, s.session, s.last.Load())
			r, err := stormDial(b, "chat", `{"type":"hello","caps":[]}`, resume, `{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
			if err != nil {
				dialErr.CompareAndSwap(nil, &err)
				return
			}
			r.last.Store(s.last.Load())
			if p := s.bad.Load(); p != nil {
				r.bad.Store(p)
			}
			moved[i] = r
			go r.read("chat")
		}()
	}
	go a.stop(15 * time.Second)
	wg.Wait()
	if p := dialErr.Load(); p != nil {
		t.Fatalf("reconnecting: %v", *p)
	}
	t.Cleanup(func() {
		for _, s := range moved {
			s.conn.CloseNow()
		}
	})
	waitFor(t, 20*time.Second, "every client resumed on the other instance", func() bool {
		for _, s := range moved {
			if !s.resumed.Load() {
				return false
			}
		}
		return true
	})
	took := make([]time.Duration, n)
	for i, s := range moved {
		took[i] = time.Unix(0, s.at.Load()).Sub(stormStart)
	}
	slices.Sort(took)
	t.Logf("%d clients reconnected and resumed: p50 %s, p99 %s, last %s after the stop began", n,
		took[n/2].Round(time.Millisecond), took[n*99/100].Round(time.Millisecond), took[n-1].Round(time.Millisecond))
	close(stop)
	<-pubDone
	pub(b) // after the storm
	final := seq.Load()
	waitFor(t, 20*time.Second, fmt.Sprintf("every client to reach seq %d", final), func() bool {
		for _, s := range moved {
			if s.last.Load() < final {
				return false
			}
		}
		return true
	})
	for i, s := range moved {
		if p := s.bad.Load(); p != nil {
			t.Fatalf("client %d: %s", i, *p)
		}
		if s.last.Load() != final {
			t.Fatalf("client %d ended at seq %d, want %d", i, s.last.Load(), final)
		}
	}
	t.Logf("%d events, none missed or repeated by any client", final)

	for _, s := range moved {
		s.conn.CloseNow()
	}
	for _, s := range moved {
		<-s.closed
	}
	base.settle(t, 15*time.Second)
}
