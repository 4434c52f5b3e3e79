package caddytest

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// dashboardView is the part of the dashboard's JSON the tests read.
type dashboardView struct {
	Self    dashboardSnap   `json:"self"`
	Cluster []dashboardSnap `json:"cluster"`
	Error   string          `json:"cluster_error"`
}

type dashboardSnap struct {
	Instance    string         `json:"instance"`
	Connections int            `json:"connections"`
	Connects    int            `json:"connects_total"`
	Disconnects int            `json:"disconnects_total"`
	Topics      int            `json:"topics"`
	Published   map[string]int `json:"published_total"`
	Hooks       map[string]any `json:"hooks"`
	Bus         struct {
		Healthy bool
		Backend string
		Changes []struct{ Healthy bool }
	} `json:"bus"`
	TopBySubscribers []dashboardTopic `json:"top_by_subscribers"`
	TopByPublishes   []dashboardTopic `json:"top_by_publishes"`
	Replay           []struct {
		Pattern, Store string
		Size           int
	} `json:"replay"`
}

type dashboardTopic struct {
	Topic       string `json:"topic"`
	Subscribers int    `json:"subscribers"`
	Publishes   int    `json:"publishes"`
	Head        int    `json:"head"`
	Presence    int    `json:"presence"`
}

// dashGet does a GET without following redirects, with an optional
// bearer key and cookie; it returns the response with its body read.
func dashGet(t testing.TB, u, key string, cookie *http.Cookie) (*http.Response, string) {
	t.Helper()
	return dashDo(t, http.MethodGet, u, key, cookie, "")
}

func dashDo(t testing.TB, method, u, key string, cookie *http.Cookie, form string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	if form != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp, b.String()
}

func sessionCookie(t testing.TB, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == "realtime_dashboard" {
			return c
		}
	}
	t.Fatalf("no realtime_dashboard cookie in %v", resp.Header["Set-Cookie"])
	return nil
}

func snapshotOf(t testing.TB, body string) dashboardView {
	t.Helper()
	var v dashboardView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("snapshot %s: %v", body, err)
	}
	return v
}

// The dashboard asks for the API key: unauthenticated requests get the
// login form (the page) or a JSON 401 (its data); a bearer key, the login
// form or one ?key= link open it, the latter two for a session cookie that
// does not carry the key. Assets are public; nothing under the path
// accepts a write.
func TestDashboardWantsTheAPIKey(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime {
			key s3cret
		}
		dashboard /_dashboard
		shutdown_spread 0
	}`)
	base := in.url("/_dashboard")

	resp, body := dashGet(t, base+"/snapshot", "", nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"code":"UNAUTHORIZED"`) {
		t.Fatalf("snapshot without a key: %d %s, want a JSON 401", resp.StatusCode, body)
	}
	resp, body = dashGet(t, base+"/", "", nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `<form method="post" action="login">`) {
		t.Fatalf("page without a key: %d, want 401 with the login form:\n%s", resp.StatusCode, body)
	}
	if resp, body = dashGet(t, base+"/snapshot", "wrong", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("snapshot with a wrong key: %d %s, want 403", resp.StatusCode, body)
	}
	resp, body = dashGet(t, base+"/snapshot", "s3cret", nil)
	if resp.StatusCode != http.StatusOK || snapshotOf(t, body).Self.Instance == "" {
		t.Fatalf("snapshot with the key: %d %s", resp.StatusCode, body)
	}

	// ?key= once: a redirect that drops the key, and a session cookie.
	resp, _ = dashGet(t, base+"/?key=s3cret", "", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/_dashboard/" {
		t.Fatalf("?key=: %d to %q, want 303 to /_dashboard/", resp.StatusCode, resp.Header.Get("Location"))
	}
	cookie := sessionCookie(t, resp)
	if strings.Contains(cookie.Value, "s3cret") || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, without the key", cookie)
	}
	resp, body = dashGet(t, base+"/", "", cookie)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `<script src="assets/app.js">`) {
		t.Fatalf("page with the cookie: %d\n%s", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Fatalf("page CSP %q, want default-src 'self'", csp)
	}
	if resp, body = dashGet(t, base+"/snapshot", "", cookie); resp.StatusCode != http.StatusOK {
		t.Fatalf("snapshot with the cookie: %d %s", resp.StatusCode, body)
	}
	// basic_auth in front sends its own Authorization header with the
	// cookie: the cookie still opens the dashboard.
	req, _ := http.NewRequest(http.MethodGet, base+"/snapshot", nil)
	req.SetBasicAuth("ops", "pw")
	req.AddCookie(cookie)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("snapshot with the cookie and a Basic header: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, _ = dashGet(t, base+"/?key=nope", "", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("?key= with a wrong key: %d, want 403", resp.StatusCode)
	}
	forged := &http.Cookie{Name: "realtime_dashboard", Value: "s3cret"}
	if resp, _ = dashGet(t, base+"/snapshot", "", forged); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("snapshot with the key as the cookie: %d, want 401", resp.StatusCode)
	}

	// The login form.
	if resp, _ = dashDo(t, http.MethodPost, base+"/login", "", nil, "key=nope"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("login with a wrong key: %d, want 403", resp.StatusCode)
	}
	resp, _ = dashDo(t, http.MethodPost, base+"/login", "", nil, "key="+url.QueryEscape("s3cret"))
	if resp.StatusCode != http.StatusSeeOther || sessionCookie(t, resp).Value != cookie.Value {
		t.Fatalf("login: %d, want 303 and the same session cookie", resp.StatusCode)
	}

	// Read-only, assets public, the bare path redirected to the slash.
	if resp, _ = dashDo(t, http.MethodPost, base+"/snapshot", "s3cret", nil, "x=1"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST snapshot: %d, want 405", resp.StatusCode)
	}
	resp, body = dashGet(t, base+"/assets/uPlot.iife.min.js", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "uPlot") || !strings.Contains(resp.Header.Get("Content-Type"), "javascript") {
		t.Fatalf("uPlot asset: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp, _ = dashGet(t, base+"/assets/../index.html", "", nil); resp.StatusCode == http.StatusOK {
		t.Fatalf("an asset path climbing out was served")
	}
	if resp, _ = dashGet(t, base, "", nil); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/_dashboard/" {
		t.Fatalf("bare path: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The API's own key check is unchanged.
	if code, _ := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", ""); code != http.StatusUnauthorized {
		t.Fatalf("api without a key: %d", code)
	}
}

// auth external leaves the decision to the handler in front: basic_auth
// refuses a caller without credentials and lets one with them through,
// with no API key asked.
func TestDashboardBehindBasicAuth(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	hash, err := exec.Command(caddyBin, "hash-password", "--plaintext", "pw").Output()
	if err != nil {
		t.Fatalf("caddy hash-password: %v", err)
	}
	in := startCaddy(t, `
	basic_auth /_dashboard* {
		ops `+strings.TrimSpace(string(hash))+`
	}
	realtime {
		api /_realtime {
			key s3cret
		}
		dashboard /_dashboard {
			auth external
		}
		shutdown_spread 0
	}`)
	if resp, _ := dashGet(t, in.url("/_dashboard/snapshot"), "", nil); resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("without credentials: %d, want basic_auth's 401", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, in.url("/_dashboard/snapshot"), nil)
	req.SetBasicAuth("ops", "pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with credentials: %d, want 200", resp.StatusCode)
	}
}

// The snapshot counts connections, connects and disconnects, lists the
// busiest topics with their replay heads and presence counts, and the
// topic view reads a topic's presence and its last buffered events.
func TestDashboardSnapshotAndTopicView(t *testing.T) {
	app := newFeatApp(t)
	in := startCaddy(t, `
	realtime {
		api /_realtime
		dashboard /_dashboard
		auth `+app.url("/auth")+`
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
		replay chat {
			size 50
		}
		presence room {
			key id
			select id name
		}
	}`)
	base := in.url("/_dashboard")
	snap := func() dashboardSnap {
		t.Helper()
		resp, body := dashGet(t, base+"/snapshot", "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("snapshot: %d %s", resp.StatusCode, body)
		}
		return snapshotOf(t, body).Self
	}
	if s := snap(); s.Connections != 0 || s.Bus.Backend != "memory" || !s.Bus.Healthy || len(s.Replay) != 1 || s.Replay[0].Size != 50 {
		t.Fatalf("idle snapshot %+v", s)
	}

	var clients []*wsClient
	for _, who := range []string{"ann", "bo"} {
		c := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"Authorization": {"Bearer " + who}}})
		c.welcome()
		current(c)
		c.send(`{"type":"subscribe","topic":"chat","ref":"chat"}`)
		c.expect(`{"type":"subscribed","topic":"chat","ref":"chat"}`)
		// The presence state may come before the ack.
		c.send(`{"type":"subscribe","topic":"room","ref":"room"}`)
		for f := c.next(5 * time.Second); f != `{"type":"subscribed","topic":"room","ref":"room"}`; f = c.next(5 * time.Second) {
		}
		clients = append(clients, c)
	}
	for i := 1; i <= 3; i++ {
		publish(t, in, `{"topic":"chat","event":"said","data":{"n":`+string(rune('0'+i))+`}}`)
	}

	var s dashboardSnap
	waitFor(t, 10*time.Second, "the snapshot to show both clients and their topics", func() bool {
		s = snap()
		return s.Connections == 2 && s.Connects >= 2 && len(s.TopBySubscribers) >= 2
	})
	topics := map[string]dashboardTopic{}
	for _, tp := range s.TopBySubscribers {
		topics[tp.Topic] = tp
	}
	if room := topics["room"]; room.Subscribers != 2 || room.Presence != 2 {
		t.Errorf("room in the busiest topics: %+v, want 2 subscribers and 2 present", room)
	}
	if chat := topics["chat"]; chat.Subscribers != 2 || chat.Head != 3 || chat.Presence != -1 {
		t.Errorf("chat in the busiest topics: %+v, want 2 subscribers, head 3, no presence", chat)
	}
	if i := slices.IndexFunc(s.TopByPublishes, func(tp dashboardTopic) bool { return tp.Topic == "chat" }); i < 0 || s.TopByPublishes[i].Publishes < 3 {
		t.Errorf("busiest by publishes %+v, want chat with its 3 publishes", s.TopByPublishes)
	}
	if s.Published["api"] < 3 {
		t.Errorf("published_total %v, want 3 from the api", s.Published)
	}
	if _, ok := s.Hooks["auth"]; !ok {
		t.Errorf("hooks %v, want the auth hook's calls", s.Hooks)
	}

	// The topic view: presence members, and the buffer newest first.
	resp, body := dashGet(t, base+"/topic?topic=room", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("topic room: %d %s", resp.StatusCode, body)
	}
	var room struct {
		Subscribers int
		Presence    *struct {
			Count   int
			Members []struct {
				Key  string
				Data map[string]any
			}
		}
		Replay any
	}
	if err := json.Unmarshal([]byte(body), &room); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, m := range room.Presence.Members {
		keys = append(keys, m.Key+"="+m.Data["name"].(string))
	}
	slices.Sort(keys)
	if room.Subscribers != 2 || room.Presence.Count != 2 || !slices.Equal(keys, []string{"u1=Ann", "u2=Bo"}) || room.Replay != nil {
		t.Fatalf("topic room: %s", body)
	}
	resp, body = dashGet(t, base+"/topic?topic=chat", "", nil)
	var chat struct {
		Presence any
		Replay   struct {
			Head, Buffered, Size int
			Events               []struct {
				Seq  int
				Data struct{ N int }
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &chat); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("topic chat: %d %s (%v)", resp.StatusCode, body, err)
	}
	if chat.Presence != nil || chat.Replay.Head != 3 || chat.Replay.Buffered != 3 || chat.Replay.Size != 50 ||
		len(chat.Replay.Events) != 3 || chat.Replay.Events[0].Seq != 3 || chat.Replay.Events[0].Data.N != 3 {
		t.Fatalf("topic chat: %s", body)
	}
	if resp, body = dashGet(t, base+"/topic?topic=__realtime", "", nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("topic view of a system topic: %d %s, want 400", resp.StatusCode, body)
	}

	// A client leaves: one connection, one disconnect.
	clients[1].c.Close(1000, "bye")
	waitFor(t, 10*time.Second, "the snapshot to count the disconnect", func() bool {
		s = snap()
		return s.Connections == 1 && s.Disconnects == 1
	})
}

// The event stream sends a view at once and then one per sample.
func TestDashboardEventStream(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		dashboard /_dashboard
		shutdown_spread 0
	}`)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.url("/_dashboard/events"), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var views []dashboardView
	var first time.Time
	for len(views) < 2 && sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		views = append(views, snapshotOf(t, data))
		if len(views) == 1 {
			first = time.Now()
			dial(t, in).welcome() // the next view counts it
		}
	}
	if len(views) < 2 {
		t.Fatalf("got %d views before the stream ended (%v)", len(views), sc.Err())
	}
	if views[0].Self.Instance == "" || views[0].Self.Instance != views[1].Self.Instance {
		t.Fatalf("views of instances %q and %q", views[0].Self.Instance, views[1].Self.Instance)
	}
	if d := time.Since(first); d > 5*time.Second {
		t.Fatalf("the second view came %s after the first, want one sample period (2 s)", d)
	}
	if views[0].Cluster != nil {
		t.Fatalf("a gateway without redis sent a cluster view: %+v", views[0].Cluster)
	}
}

// With Redis, a dashboard opened on one instance shows every instance:
// its watch mark makes the others put their snapshots.
func TestDashboardClusterViewShowsEveryInstance(t *testing.T) {
	cl := startCluster(t, 2, `
	realtime {
		api /_realtime
		dashboard /_dashboard
		shutdown_spread 0
	}`)
	c := dial(t, cl.nodes[1])
	c.welcome()
	var v dashboardView
	waitFor(t, 15*time.Second, "node 0's view to show node 1's connection", func() bool {
		resp, body := dashGet(t, cl.nodes[0].url("/_dashboard/snapshot"), "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("snapshot: %d %s", resp.StatusCode, body)
		}
		v = snapshotOf(t, body)
		if len(v.Cluster) != 2 {
			return false
		}
		for _, s := range v.Cluster {
			if s.Instance != v.Self.Instance && s.Connections == 1 {
				return true
			}
		}
		return false
	})
	if v.Error != "" || v.Self.Bus.Backend != "redis" || v.Cluster[0].Instance == v.Cluster[1].Instance {
		t.Fatalf("cluster view %+v", v)
	}
}

// While Redis is down the dashboard still answers, from this instance
// alone, says the cluster view is unavailable, and the bus's degraded
// stretch is in its changes once Redis is back.
func TestDashboardShowsTheBusDegradedPeriod(t *testing.T) {
	cl := startCluster(t, 1, `
	realtime {
		api /_realtime
		dashboard /_dashboard
		shutdown_spread 0
	}`)
	in := cl.nodes[0]
	var changes []bool // the bus's changes in the last view: healthy or not
	view := func() dashboardView {
		t.Helper()
		start := time.Now()
		resp, body := dashGet(t, in.url("/_dashboard/snapshot"), "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("snapshot: %d %s", resp.StatusCode, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("snapshot took %s", d)
		}
		v := snapshotOf(t, body)
		changes = changes[:0]
		for _, c := range v.Self.Bus.Changes {
			changes = append(changes, c.Healthy)
		}
		return v
	}
	waitFor(t, 10*time.Second, "a healthy cluster view", func() bool {
		v := view()
		return v.Self.Bus.Healthy && len(v.Cluster) == 1 && len(changes) == 0
	})
	cl.redis.Kill()
	waitFor(t, 20*time.Second, "the degraded bus and no cluster view", func() bool {
		v := view()
		return !v.Self.Bus.Healthy && v.Error != "" && v.Cluster == nil && slices.Equal(changes, []bool{false})
	})
	cl.redis.Restart()
	waitFor(t, 30*time.Second, "the recovery after the degraded stretch", func() bool {
		v := view()
		return v.Self.Bus.Healthy && v.Error == "" && slices.Equal(changes, []bool{false, true})
	})
}
