package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// cluster is several Caddy instances sharing one throwaway redis-server,
// or, with REALTIME_TEST_REDIS_CLUSTER=1, a Redis Cluster of 3 masters and
// 3 replicas (redis is nil then).
type cluster struct {
	redis    *testsvc.RedisServer
	rcluster *testsvc.Cluster
	nodes    []*instance
}

// onRedisCluster reports whether the cluster tests run on a Redis Cluster
// (REALTIME_TEST_REDIS_CLUSTER=1), to check every feature there:
//
//	REALTIME_TEST_REDIS_CLUSTER=1 go test -count=1 -p 1 -run 'TestCluster' ./caddytest/
func onRedisCluster() bool { return os.Getenv("REALTIME_TEST_REDIS_CLUSTER") == "1" }

// needOneServer skips a test that kills the one redis-server when the
// tests run on a Redis Cluster.
func (cl *cluster) needOneServer(t *testing.T) {
	t.Helper()
	if cl.redis == nil {
		t.Skip("kills the one redis-server; REALTIME_TEST_REDIS_CLUSTER is set")
	}
}

// startCluster starts redis-server on a free port and n Caddy instances
// using it, each serving site, on the default (routed) bus.
func startCluster(t *testing.T, n int, site string) *cluster {
	t.Helper()
	return startClusterWith(t, n, site, "")
}

// startClusterWith is startCluster with more options of the redis block
// (compat uws, partitions 8).
func startClusterWith(t *testing.T, n int, site, redisOpts string) *cluster {
	t.Helper()
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	cl := &cluster{}
	url := ""
	if onRedisCluster() {
		cl.rcluster = testsvc.StartCluster(t)
		url = cl.rcluster.URL()
	} else {
		cl.redis = testsvc.StartRedis(t)
		url = "redis://" + cl.redis.Addr()
	}
	global := fmt.Sprintf(`	realtime {
		redis %s {
			key_prefix t:
			%s
		}
	}`, url, redisOpts)
	for i := 0; i < n; i++ {
		cl.nodes = append(cl.nodes, startCaddyWith(t, global, site))
	}
	return cl
}

func (cl *cluster) client(t *testing.T) rueidis.Client {
	t.Helper()
	if cl.rcluster != nil {
		return cl.rcluster.Client(t)
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{cl.redis.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

const clusterSite = `
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat* {
			store redis
			size 100
		}
	}`

type envelope struct {
	Topic string          `json:"topic"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	Seq   uint64          `json:"seq"`
	Type  string          `json:"type"`
}

// subscribed dials in, subscribes topics (legacy: no acks, no batch
// frames) and waits until the gateway counts the subscriptions.
func subscribedLegacy(t *testing.T, in *instance, topics ...string) *wsClient {
	t.Helper()
	c := dial(t, in)
	c.welcome()
	for _, tp := range topics {
		c.send(`{"type":"subscribe","topic":"` + tp + `","ref":1}`)
		c.expect(`{"type":"subscribed","topic":"` + tp + `","ref":1}`)
	}
	return c
}

func nextEnvelope(t *testing.T, c *wsClient) envelope {
	t.Helper()
	var e envelope
	raw := c.next(10 * time.Second)
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		t.Fatalf("frame %s: %v", raw, err)
	}
	return e
}

// A publish on any instance reaches the subscribers of every instance
// exactly once, in the publisher's order.
func TestClusterDeliversAcrossInstancesOnceInOrder(t *testing.T) {
	cl := startCluster(t, 3, clusterSite)
	var clients []*wsClient
	for _, n := range cl.nodes {
		clients = append(clients, subscribedLegacy(t, n, "news"))
	}
	// The bus subscription of each instance is up once a probe round trip
	// has been made; publish until the farthest instance sees the first.
	waitFor(t, 10*time.Second, "every instance's bus to deliver", func() bool {
		publish(t, cl.nodes[0], `{"topic":"news","event":"ping","data":0,"seq":false}`)
		for _, c := range clients {
			select {
			case <-c.frames:
			case <-time.After(200 * time.Millisecond):
				return false
			}
		}
		return true
	})
	for _, c := range clients { // drain extra pings
		for len(c.frames) > 0 {
			<-c.frames
		}
	}
	const n = 100
	for i := 1; i <= n; i++ {
		publish(t, cl.nodes[i%3], fmt.Sprintf(`{"topic":"news","event":"e","data":{"from":%d,"i":%d}}`, i%3, i))
	}
	for ci, c := range clients {
		last := map[int]int{}
		for k := 0; k < n; k++ {
			e := nextEnvelope(t, c)
			var d struct{ From, I int }
			_ = json.Unmarshal(e.Data, &d)
			if e.Event != "e" || d.I <= last[d.From] {
				t.Fatalf("client %d: %+v after %d from instance %d: out of order or duplicated", ci, d, last[d.From], d.From)
			}
			last[d.From] = d.I
		}
		c.quiet(300 * time.Millisecond)
	}
}

// Any process may PUBLISH an envelope into the bus channel (compat mode:
// the reference package's one channel); hostile ones are dropped and the
// next valid one is delivered.
func TestClusterOutsideEnvelopes(t *testing.T) {
	cl := startClusterWith(t, 1, clusterSite, "compat uws")
	c := subscribedLegacy(t, cl.nodes[0], "news")
	rc := cl.client(t)
	pub := func(payload string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rc.Do(ctx, rc.B().Publish().Channel("uws:pubsub").Message(payload).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the bus subscription", func() bool {
		pub(`{"instanceId":"node-app","topic":"news","event":"hello","data":{"x":1}}`)
		select {
		case f := <-c.frames:
			return string(f) == `{"topic":"news","event":"hello","data":{"x":1}}`
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
	for len(c.frames) > 0 {
		<-c.frames
	}
	for _, hostile := range []string{
		`not json`,
		`{"instanceId":"x","topic":"__presence:news","event":"join","data":1}`,
		`{"instanceId":"x","topic":"news\u0001","event":"e","data":1}`,
		`{"instanceId":"x","topic":"news","event":"bad\"event","data":1}`,
		`{"instanceId":"x","topic":"news","event":"e","data":{"unterminated":`,
		`{"instanceId":"x","topic":42,"event":"e","data":1}`,
		`{"instanceId":"x","topic":"news","event":"e","data":"` + strings.Repeat("x", 3<<20) + `"}`,
	} {
		pub(hostile)
	}
	pub(`{"instanceId":"node-app","batch":[{"topic":"news","event":"a","data":1},{"topic":"news","event":"b","data":2}]}`)
	c.expect(`{"topic":"news","event":"a","data":1}`)
	c.expect(`{"topic":"news","event":"b","data":2}`)
	c.quiet(300 * time.Millisecond)
}

// Concurrent publishes from three instances to one replayed topic get
// contiguous unique seqs, and every client receives them in seq order.
func TestClusterReplaySeqsAreClusterWide(t *testing.T) {
	cl := startCluster(t, 3, clusterSite)
	var clients []*wsClient
	for _, n := range cl.nodes {
		clients = append(clients, subscribedLegacy(t, n, "chat"))
	}
	const per = 50
	var wg sync.WaitGroup
	seqs := make(chan uint64, 3*per)
	for _, n := range cl.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				status, body := apiCall(t, http.MethodPost, n.url("/_realtime/publish"), "", `{"topic":"chat","event":"m","data":1}`)
				var r struct{ Seq uint64 }
				if status != 200 || json.Unmarshal([]byte(body), &r) != nil {
					t.Errorf("publish: %d %s", status, body)
					return
				}
				seqs <- r.Seq
			}
		}()
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d given twice", s)
		}
		seen[s] = true
	}
	for s := uint64(1); s <= 3*per; s++ {
		if !seen[s] {
			t.Fatalf("seq %d missing: seqs are not contiguous", s)
		}
	}
	for ci, c := range clients {
		for s := uint64(1); s <= 3*per; s++ {
			if e := nextEnvelope(t, c); e.Seq != s {
				t.Fatalf("client %d: got seq %d, want %d (in order, once)", ci, e.Seq, s)
			}
		}
	}
}

// A client that saw seq 5 on instance A resumes on instance C after
// publishes through B, and gets exactly what it missed.
func TestClusterResumeOnAnotherInstance(t *testing.T) {
	cl := startCluster(t, 3, clusterSite)
	a := subscribedLegacy(t, cl.nodes[0], "chat")
	for i := 1; i <= 5; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
	}
	for s := uint64(1); s <= 5; s++ {
		if e := nextEnvelope(t, a); e.Seq != s {
			t.Fatalf("seq %d, want %d", e.Seq, s)
		}
	}
	a.c.CloseNow()
	for i := 6; i <= 9; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
	}
	c := dial(t, cl.nodes[2])
	c.welcome()
	c.send(`{"type":"hello","caps":[]}`)
	c.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":5}}`)
	c.send(`{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
	c.expect(`{"type":"resumed"}`)
	for i := 6; i <= 9; i++ {
		c.expect(fmt.Sprintf(`{"topic":"chat","event":"m","data":%d,"seq":%d}`, i, i))
	}
	c.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
	publish(t, cl.nodes[0], `{"topic":"chat","event":"m","data":10}`)
	c.expect(`{"topic":"chat","event":"m","data":10,"seq":10}`)
	c.quiet(300 * time.Millisecond)

	// Truncation across instances: 100 more publishes evict seq 6.
	for i := 11; i <= 110; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
	}
	d := dial(t, cl.nodes[0])
	d.welcome()
	d.send(`{"type":"hello","caps":[]}`)
	d.send(`{"type":"replay","topic":"chat","since":5,"reqId":1}`)
	var last string
	for {
		last = d.next(5 * time.Second)
		if strings.Contains(last, `"event":"end"`) {
			break
		}
	}
	if last != `{"topic":"__replay:chat","event":"end","data":{"reqId":1,"truncated":true}}` {
		t.Fatalf("end frame %s, want truncated", last)
	}
}

// Redis killed and restarted under load: local delivery continues,
// clients are told degraded then recovered, and cross-instance delivery
// comes back without restarting Caddy.
func TestClusterRedisOutage(t *testing.T) {
	cl := startCluster(t, 2, clusterSite)
	cl.needOneServer(t)
	a := subscribedLegacy(t, cl.nodes[0], "news")
	b := subscribedLegacy(t, cl.nodes[1], "news")
	waitFor(t, 10*time.Second, "cross-instance delivery", func() bool {
		publish(t, cl.nodes[0], `{"topic":"news","event":"ping","data":0,"seq":false}`)
		select {
		case <-b.frames:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
	cl.redis.Kill()
	sawDegraded := func(c *wsClient) func() bool {
		return func() bool {
			publish(t, cl.nodes[0], `{"topic":"news","event":"local","data":1,"seq":false}`)
			for {
				select {
				case f := <-c.frames:
					if strings.Contains(string(f), `"topic":"__realtime","event":"degraded"`) {
						return true
					}
				case <-time.After(100 * time.Millisecond):
					return false
				}
			}
		}
	}
	waitFor(t, 15*time.Second, "degraded on instance A", sawDegraded(a))
	waitFor(t, 15*time.Second, "degraded on instance B", sawDegraded(b))
	// Local delivery kept working meanwhile.
	publish(t, cl.nodes[0], `{"topic":"news","event":"during","data":1,"seq":false}`)
	for {
		if e := nextEnvelope(t, a); e.Event == "during" {
			break
		}
	}
	cl.redis.Restart()
	sawRecovered := func(c *wsClient) func() bool {
		return func() bool {
			for {
				select {
				case f := <-c.frames:
					if strings.Contains(string(f), `"topic":"__realtime","event":"recovered"`) {
						return true
					}
				case <-time.After(100 * time.Millisecond):
					return false
				}
			}
		}
	}
	waitFor(t, 20*time.Second, "recovered on instance B", sawRecovered(b))
	waitFor(t, 20*time.Second, "cross-instance delivery after the restart", func() bool {
		publish(t, cl.nodes[0], `{"topic":"news","event":"after","data":1,"seq":false}`)
		for {
			select {
			case f := <-b.frames:
				if strings.Contains(string(f), `"event":"after"`) {
					return true
				}
			case <-time.After(200 * time.Millisecond):
				return false
			}
		}
	})
}
