package caddytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const clusterExtSite = `
	realtime {
		api /_realtime
		shutdown_spread 0
		presence room* {
			ttl 3s
			heartbeat 1s
		}
		cursor canvas* {
			throttle off
			topic_throttle 16ms
			ttl 3s
		}
		group lobby {
			max_members 10
			member_ttl 3s
		}
		rate_limit {
			points 5
			interval 1m
			key connection
		}
	}`

// presenceMembers reads GET /presence on in.
func presenceMembers(t *testing.T, in *instance, topic string) map[string]json.RawMessage {
	t.Helper()
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/presence?topic="+topic), "", "")
	if status != 200 {
		t.Fatalf("presence: %d %s", status, body)
	}
	var r struct {
		Members []struct {
			Key  string          `json:"key"`
			Data json.RawMessage `json:"data"`
		} `json:"members"`
	}
	_ = json.Unmarshal([]byte(body), &r)
	out := map[string]json.RawMessage{}
	for _, m := range r.Members {
		out[m.Key] = m.Data
	}
	return out
}

// diffs collects the presence_diff joins and leaves a current client sees.
func waitDiff(t *testing.T, c *wsClient, kind, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		raw := c.next(time.Until(deadline))
		var f struct {
			Event string `json:"event"`
			Data  struct {
				Joins  map[string]json.RawMessage `json:"joins"`
				Leaves map[string]json.RawMessage `json:"leaves"`
			} `json:"data"`
		}
		if json.Unmarshal([]byte(raw), &f) != nil || f.Event != "presence_diff" {
			continue
		}
		set := f.Data.Joins
		if kind == "leave" {
			set = f.Data.Leaves
		}
		if _, ok := set[key]; ok {
			return
		}
	}
	t.Fatalf("no presence_diff with %s of %q", kind, key)
}

// Two tabs of one user on two instances count once; closing one keeps
// the user present; closing both produces exactly one leave everywhere.
func TestClusterPresenceAcrossInstances(t *testing.T) {
	// The auth hook names the user from a header, so two tabs share an id.
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q}`, r.Header.Get("X-User"))
	}))
	defer auth.Close()
	site := strings.Replace(clusterExtSite, "api /_realtime", "api /_realtime\n\t\tauth "+auth.URL+" {\n\t\t\theaders X-User\n\t\t}", 1)
	cl := startCluster(t, 3, site)
	a, b, w := cl.nodes[0], cl.nodes[1], cl.nodes[2]
	as := func(in *instance, user string) *wsClient {
		c := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"X-User": {user}}})
		c.welcome()
		c.send(`{"type":"hello","caps":["batch"]}`)
		return c
	}
	watcher := as(w, "watcher")
	watcher.send(`{"type":"subscribe","topic":"__presence:room","ref":1}`)
	tab1 := as(a, "u1")
	tab1.send(`{"type":"subscribe","topic":"room","ref":1}`)
	waitDiff(t, watcher, "join", "u1")
	tab2 := as(b, "u1")
	tab2.send(`{"type":"subscribe","topic":"room","ref":1}`)
	waitFor(t, 5*time.Second, "the second tab's subscription", func() bool {
		_, body := apiCall(t, http.MethodGet, b.url("/_realtime/stats"), "", "")
		return strings.Contains(body, `"subscriptions":1`)
	})
	if n := len(presenceMembers(t, w, "room")); n != 1 {
		t.Fatalf("%d members for two tabs of one user on two instances, want 1", n)
	}
	tab1.c.CloseNow()
	noLeave(t, watcher, "u1", 1500*time.Millisecond) // tab2 stays
	if _, ok := presenceMembers(t, a, "room")["u1"]; !ok {
		t.Fatal("u1 left although its second tab is open on another instance")
	}
	tab2.c.CloseNow()
	waitDiff(t, watcher, "leave", "u1")
	noLeave(t, watcher, "u1", 1500*time.Millisecond) // exactly one leave
}

// noLeave fails if a presence_diff leaving key arrives within d (other
// frames, heartbeats included, are fine).
func noLeave(t *testing.T, c *wsClient, key string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case raw := <-c.frames:
			for _, e := range elements(raw) {
				var f struct {
					Event string `json:"event"`
					Data  struct {
						Leaves map[string]json.RawMessage `json:"leaves"`
					} `json:"data"`
				}
				if json.Unmarshal([]byte(e), &f) == nil && f.Event == "presence_diff" {
					if _, ok := f.Data.Leaves[key]; ok {
						t.Fatalf("unexpected leave of %q: %s", key, raw)
					}
				}
			}
		case <-deadline:
			return
		}
	}
}

// SIGKILL of an instance holding a member: the others broadcast its leave
// within ttl plus a heartbeat.
func TestClusterPresenceDeadInstanceLeaves(t *testing.T) {
	cl := startCluster(t, 2, clusterExtSite)
	a, b := cl.nodes[0], cl.nodes[1]
	watcher := dial(t, b)
	watcher.welcome()
	watcher.send(`{"type":"hello","caps":["batch"]}`)
	watcher.send(`{"type":"subscribe","topic":"__presence:room","ref":1}`)
	c := dial(t, a)
	id := c.welcome()
	c.send(`{"type":"subscribe","topic":"room","ref":1}`)
	waitDiff(t, watcher, "join", "__conn:"+id)
	start := time.Now()
	_ = a.cmd.Process.Kill()
	waitDiff(t, watcher, "leave", "__conn:"+id)
	t.Logf("leave of the dead instance's member after %s (ttl 3s, heartbeat 1s)", time.Since(start).Round(10*time.Millisecond))
	if m := presenceMembers(t, b, "room"); len(m) != 0 {
		t.Fatalf("members after the reaping: %v", m)
	}
}

// 30 concurrent consumes over 3 instances with points 5 allow exactly 5.
func TestClusterRateLimitExact(t *testing.T) {
	cl := startCluster(t, 3, clusterExtSite)
	var allowed atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body := apiCall(t, http.MethodPost, cl.nodes[i%3].url("/_realtime/ratelimit/consume"), "", `{"key":"shared","cost":1}`)
			if status == 200 && strings.Contains(body, `"allowed":true`) {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := allowed.Load(); n != 5 {
		t.Fatalf("%d consumes allowed over 3 instances, want exactly 5", n)
	}
	// A ban made through one instance holds on the others.
	apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/ratelimit/ban"), "", `{"key":"banned","duration":"1m"}`)
	if _, body := apiCall(t, http.MethodPost, cl.nodes[2].url("/_realtime/ratelimit/consume"), "", `{"key":"banned"}`); !strings.Contains(body, `"allowed":false`) {
		t.Fatalf("a ban made on instance 0 was not seen on instance 2: %s", body)
	}
}

// 30 concurrent joins over 3 instances with max_members 10 admit exactly
// 10; a role-less group publish reaches members on every instance; close
// propagates and blocks later joins everywhere.
func TestClusterGroups(t *testing.T) {
	cl := startCluster(t, 3, clusterExtSite)
	var joined atomic.Int32
	var wg sync.WaitGroup
	conns := make([]*wsClient, 30)
	for i := range conns {
		conns[i] = dial(t, cl.nodes[i%3])
		conns[i].welcome()
	}
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i].send(`{"type":"subscribe","topic":"__group:lobby","ref":1}`)
		}()
	}
	wg.Wait()
	members := []*wsClient{}
	for _, c := range conns {
		for {
			f := c.next(10 * time.Second)
			if strings.HasPrefix(f, `{"type":"subscribed"`) {
				joined.Add(1)
				members = append(members, c)
				break
			}
			if strings.HasPrefix(f, `{"type":"subscribe-denied"`) {
				if !strings.Contains(f, `"FORBIDDEN"`) {
					t.Fatalf("denied with %s, want FORBIDDEN", f)
				}
				break
			}
		}
	}
	if n := joined.Load(); n != 10 {
		t.Fatalf("%d joins admitted over 3 instances, want exactly 10", n)
	}
	status, body := apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/groups/publish"), "", `{"name":"lobby","event":"news","data":{"n":1}}`)
	if status != 200 {
		t.Fatalf("group publish: %d %s", status, body)
	}
	for i, c := range members {
		for {
			f := c.next(10 * time.Second)
			if f == `{"topic":"__group:lobby","event":"news","data":{"n":1}}` {
				break
			}
			if strings.Contains(f, `"event":"news"`) {
				t.Fatalf("member %d: %s", i, f)
			}
		}
	}
	apiCall(t, http.MethodPost, cl.nodes[1].url("/_realtime/groups/close"), "", `{"name":"lobby"}`)
	for i, c := range members {
		for {
			f := c.next(10 * time.Second)
			if f == `{"topic":"__group:lobby","event":"close","data":null}` {
				break
			}
			if strings.Contains(f, `"event":"close"`) {
				t.Fatalf("member %d: %s", i, f)
			}
		}
	}
	late := dial(t, cl.nodes[2])
	late.welcome()
	late.send(`{"type":"subscribe","topic":"__group:lobby","ref":1}`)
	late.expect(`{"type":"subscribe-denied","topic":"__group:lobby","ref":1,"reason":"FORBIDDEN"}`)
}

// Cursor moves on one instance reach attached connections on another;
// a mover's close propagates remove.
func TestClusterCursors(t *testing.T) {
	cl := startCluster(t, 2, clusterExtSite)
	a, b := cl.nodes[0], cl.nodes[1]
	watcher := dial(t, b)
	watcher.welcome()
	watcher.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	watcher.expect(`{"topic":"__cursor:canvas","event":"snapshot","data":[]}`)
	mover := dial(t, a)
	id := mover.welcome()
	mover.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	mover.next(3 * time.Second) // its own snapshot
	waitFor(t, 10*time.Second, "a relayed cursor update", func() bool {
		mover.send(`{"type":"cursor","topic":"canvas","data":{"x":1}}`)
		select {
		case f := <-watcher.frames:
			return string(f) == fmt.Sprintf(`{"topic":"__cursor:canvas","event":"update","data":{"key":"%s","user":{},"data":{"x":1}}}`, id)
		case <-time.After(300 * time.Millisecond):
			return false
		}
	})
	// The snapshot on the other instance lists the mover's cursor.
	other := dial(t, b)
	other.welcome()
	other.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	if f := other.next(3 * time.Second); !strings.Contains(f, id) {
		t.Fatalf("snapshot on instance B %s does not list the mover of instance A", f)
	}
	mover.c.CloseNow()
	for {
		f := watcher.next(10 * time.Second)
		if f == fmt.Sprintf(`{"topic":"__cursor:canvas","event":"remove","data":{"key":"%s"}}`, id) {
			break
		}
	}
}

// When an instance dies, its cursors expire after ttl: one live instance
// publishes their remove, and snapshots stop listing them.
func TestClusterCursorsOfDeadInstanceExpire(t *testing.T) {
	cl := startCluster(t, 2, clusterExtSite)
	a, b := cl.nodes[0], cl.nodes[1]
	watcher := dial(t, b)
	watcher.welcome()
	watcher.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	watcher.expect(`{"topic":"__cursor:canvas","event":"snapshot","data":[]}`)
	mover := dial(t, a)
	id := mover.welcome()
	mover.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	mover.next(3 * time.Second)
	waitFor(t, 10*time.Second, "a relayed cursor update", func() bool {
		mover.send(`{"type":"cursor","topic":"canvas","data":{"x":1}}`)
		select {
		case f := <-watcher.frames:
			return strings.Contains(string(f), id)
		case <-time.After(300 * time.Millisecond):
			return false
		}
	})
	start := time.Now()
	_ = a.cmd.Process.Kill()
	for {
		f := watcher.next(15 * time.Second)
		if f == fmt.Sprintf(`{"topic":"__cursor:canvas","event":"remove","data":{"key":"%s"}}`, id) {
			break
		}
	}
	t.Logf("remove of the dead instance's cursor after %s (ttl 3s)", time.Since(start).Round(10*time.Millisecond))
	late := dial(t, b)
	late.welcome()
	late.send(`{"type":"cursor-snapshot","topic":"canvas"}`)
	late.expect(`{"topic":"__cursor:canvas","event":"snapshot","data":[]}`)
}

// A role-filtered group publish on one instance reaches the members with
// that role on every instance, and only them.
func TestClusterGroupRoleFilteredPublish(t *testing.T) {
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"role":%q}`, r.Header.Get("X-User"), r.Header.Get("X-Role"))
	}))
	defer auth.Close()
	site := fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		auth %s {
			headers X-User X-Role
		}
		group staff {
			role_from role
		}
	}`, auth.URL)
	cl := startCluster(t, 2, site)
	join := func(in *instance, user, role string) *wsClient {
		c := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"X-User": {user}, "X-Role": {role}}})
		c.welcome()
		c.send(`{"type":"subscribe","topic":"__group:staff","ref":1}`)
		for {
			if f := c.next(5 * time.Second); strings.HasPrefix(f, `{"type":"subscribed"`) {
				return c
			}
		}
	}
	adminA := join(cl.nodes[0], "a1", "admin")
	memberA := join(cl.nodes[0], "m1", "member")
	adminB := join(cl.nodes[1], "a2", "admin")
	memberB := join(cl.nodes[1], "m2", "member")
	want := `{"topic":"__group:staff","event":"alert","data":{"level":2}}`
	waitFor(t, 10*time.Second, "the admin on the other instance", func() bool {
		apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/groups/publish"), "", `{"name":"staff","event":"alert","data":{"level":2},"role":"admin"}`)
		for {
			select {
			case f := <-adminB.frames:
				if string(f) == want {
					return true
				}
			case <-time.After(300 * time.Millisecond):
				return false
			}
		}
	})
	sawAlert := func(c *wsClient) bool {
		for {
			select {
			case f := <-c.frames:
				if strings.Contains(string(f), `"event":"alert"`) {
					return true
				}
			case <-time.After(500 * time.Millisecond):
				return false
			}
		}
	}
	if !sawAlert(adminA) {
		t.Fatal("the admin on the publishing instance got no alert")
	}
	if sawAlert(memberA) || sawAlert(memberB) {
		t.Fatal("a member without the admin role got the admin-only alert")
	}
}
