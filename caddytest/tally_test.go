package caddytest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tallySite authenticates from the X-User and X-Role headers and has one
// group whose roles come from the identity.
func tallySite(t *testing.T) string {
	t.Helper()
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"role":%q}`, r.Header.Get("X-User"), r.Header.Get("X-Role"))
	}))
	t.Cleanup(auth.Close)
	return fmt.Sprintf(`
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
}

func tallyDial(t *testing.T, in *instance, user, role string) *wsClient {
	t.Helper()
	c := dialWith(t, in, dialOpts{origin: in.origin(), header: http.Header{"X-User": {user}, "X-Role": {role}}})
	c.welcome()
	return c
}

func tallyJoin(t *testing.T, in *instance, user, role string) *wsClient {
	t.Helper()
	c := tallyDial(t, in, user, role)
	c.send(`{"type":"subscribe","topic":"__group:staff","ref":1}`)
	for {
		if f := c.next(5 * time.Second); strings.HasPrefix(f, `{"type":"subscribed"`) {
			return c
		} else if strings.HasPrefix(f, `{"type":"subscribe-denied"`) {
			t.Fatalf("join: %s", f)
		}
	}
}

// startTallyCluster starts n instances on tallySite and, at the end of
// the test, fails it if a race-enabled build (REALTIME_TEST_RACE) of one
// of them reported a data race.
func startTallyCluster(t *testing.T, n int) *cluster {
	t.Helper()
	cl := startCluster(t, n, tallySite(t))
	t.Cleanup(func() {
		for i, in := range cl.nodes {
			in.stop(10 * time.Second)
			if strings.Contains(in.logs.String(), "WARNING: DATA RACE") {
				t.Errorf("instance %d reported a data race:\n%s", i, in.logs.String())
			}
		}
	})
	return cl
}

// tallyReady waits until every one of n instances subscribes to the
// channel the API's deliveries travel on.
func tallyReady(t *testing.T, cl *cluster, n int64) {
	t.Helper()
	const ch = "t:rt:tally:/ws:ask"
	if cl.rcluster == nil {
		waitFor(t, 10*time.Second, "the instances' tally subscriptions", func() bool { return cl.numsub(t, ch) == n })
		return
	}
	// A shard channel: its subscribers are on its slot's master.
	rc := cl.client(t)
	waitFor(t, 10*time.Second, "the instances' tally shard subscriptions", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		subs, err := rc.Do(ctx, rc.B().PubsubShardnumsub().Channel(ch).Build()).AsIntMap()
		return err == nil && subs[ch] == n
	})
}

// expectFrame reads c's frames until want, failing on another frame of
// the same event.
func expectFrame(t *testing.T, c *wsClient, want, event string) {
	t.Helper()
	for {
		f := c.next(5 * time.Second)
		if f == want {
			return
		}
		if strings.Contains(f, `"event":"`+event+`"`) {
			t.Fatalf("got %s, want %s", f, want)
		}
	}
}

// noMore reads c's frames until none comes for d, failing on one of the
// events (a frame delivered twice, or to a member it was not for).
func noMore(t *testing.T, c *wsClient, d time.Duration, events ...string) {
	t.Helper()
	for {
		var f string
		if len(c.pending) > 0 {
			f, c.pending = c.pending[0], c.pending[1:]
		} else {
			select {
			case b := <-c.frames:
				f = string(b)
			case <-time.After(d):
				return
			}
		}
		for _, e := range elements([]byte(f)) {
			for _, ev := range events {
				if strings.Contains(e, `"event":"`+ev+`"`) {
					t.Fatalf("unexpected frame: %s", e)
				}
			}
		}
	}
}

// POST /send answers the number of the user's connections on every
// instance, and POST /groups/publish the number of members reached on
// every instance, with or without a role filter.
func TestClusterAnswersCountEveryInstance(t *testing.T) {
	cl := startTallyCluster(t, 3)
	tabs := []*wsClient{tallyDial(t, cl.nodes[1], "u1", ""), tallyDial(t, cl.nodes[1], "u1", ""), tallyDial(t, cl.nodes[2], "u1", "")}
	tallyReady(t, cl, 3)

	status, body := apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/send"), "", `{"user":"u1","topic":"dm:u1","event":"new","data":1}`)
	if status != http.StatusOK || body != `{"delivered":3,"instances":3,"partial":false}` {
		t.Fatalf("send to a user with 2 tabs on one instance and 1 on another, through a third: %d %s", status, body)
	}
	for _, c := range tabs {
		c.expect(`{"topic":"dm:u1","event":"new","data":1}`)
	}
	for _, c := range tabs {
		c.quiet(200 * time.Millisecond)
	}
	status, body = apiCall(t, http.MethodPost, cl.nodes[1].url("/_realtime/send"), "", `{"user":"nobody","topic":"dm:x","event":"new","data":1}`)
	if status != http.StatusOK || body != `{"delivered":0,"instances":3,"partial":false}` {
		t.Fatalf("send to a user connected nowhere: %d %s", status, body)
	}

	members := []*wsClient{
		tallyJoin(t, cl.nodes[0], "a1", "admin"),
		tallyJoin(t, cl.nodes[1], "m1", "member"),
		tallyJoin(t, cl.nodes[1], "a2", "admin"),
		tallyJoin(t, cl.nodes[2], "m2", "member"),
		tallyJoin(t, cl.nodes[2], "m3", "member"),
	}
	status, body = apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/groups/publish"), "", `{"name":"staff","event":"all","data":2}`)
	if status != http.StatusOK || body != `{"delivered":5,"instances":3,"partial":false}` {
		t.Fatalf("group publish to 5 members over 3 instances: %d %s", status, body)
	}
	for _, c := range members {
		expectFrame(t, c, `{"topic":"__group:staff","event":"all","data":2}`, "all")
	}
	status, body = apiCall(t, http.MethodPost, cl.nodes[2].url("/_realtime/groups/publish"), "", `{"name":"staff","event":"alert","data":3,"role":"admin"}`)
	if status != http.StatusOK || body != `{"delivered":2,"instances":3,"partial":false}` {
		t.Fatalf("admin-only group publish, admins on two other instances: %d %s", status, body)
	}
	for _, c := range []*wsClient{members[0], members[2]} {
		expectFrame(t, c, `{"topic":"__group:staff","event":"alert","data":3}`, "alert")
	}
	// Once each, and the admins' frame to no member.
	for _, c := range members {
		noMore(t, c, 300*time.Millisecond, "all", "alert")
	}
}

// An instance SIGKILLed while a send is asked for, or one that is stopped
// and cannot answer, never makes POST /send wait beyond AnswerWait (500
// ms): the answer then counts the instances that answered and says
// partial when one that received the message did not.
func TestClusterAnswersDoNotWaitForDeadInstances(t *testing.T) {
	cl := startTallyCluster(t, 3)
	for _, n := range cl.nodes {
		tallyDial(t, n, "u1", "")
	}
	tallyReady(t, cl, 3)
	send := func() (string, time.Duration) {
		start := time.Now()
		status, body := apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/send"), "", `{"user":"u1","topic":"dm:u1","event":"new","data":1}`)
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		return body, time.Since(start)
	}
	if body, _ := send(); body != `{"delivered":3,"instances":3,"partial":false}` {
		t.Fatalf("send with every instance up: %s", body)
	}

	// The bound is AnswerWait plus a generous margin for this shared machine.
	const bound = 2500 * time.Millisecond
	if err := cl.nodes[2].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	body, took := send()
	if took > bound {
		t.Fatalf("send right after a SIGKILL took %s, want at most %s", took, bound)
	}
	if body != `{"delivered":2,"instances":2,"partial":false}` && body != `{"delivered":2,"instances":2,"partial":true}` {
		t.Fatalf("send right after a SIGKILL: %s, want the two live instances counted", body)
	}
	// Once Redis saw the connection close, the dead instance is not waited for.
	tallyReady(t, cl, 2)
	if body, took := send(); body != `{"delivered":2,"instances":2,"partial":false}` || took > bound {
		t.Fatalf("send after the killed instance left: %s in %s", body, took)
	}

	stopped := cl.nodes[1].cmd.Process
	if err := stopped.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stopped.Signal(syscall.SIGCONT) })
	body, took = send()
	if body != `{"delivered":1,"instances":1,"partial":true}` {
		t.Fatalf("send with an instance stopped: %s, want this instance's count, partial", body)
	}
	if took < 400*time.Millisecond || took > bound {
		t.Fatalf("send with an instance stopped took %s, want about AnswerWait (500ms)", took)
	}
	_ = stopped.Signal(syscall.SIGCONT)
	waitFor(t, 10*time.Second, "the resumed instance's answers", func() bool {
		body, _ := send()
		return body == `{"delivered":2,"instances":2,"partial":false}`
	})
}
