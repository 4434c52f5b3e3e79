package caddytest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// numsub reads how many connections subscribe to channel.
func (cl *cluster) numsub(t *testing.T, channel string) int64 {
	t.Helper()
	if rc := cl.rcluster; rc != nil {
		// On a Redis Cluster, classic subscriptions are counted by the
		// node they were made on, shard ones by the slot's master.
		var n int64
		count := func(node *testsvc.RedisServer, args ...string) {
			m, err := rc.NodeDo(node, args...)
			if err != nil {
				t.Fatalf("%v: %v", args, err)
			}
			subs, _ := m.AsIntMap()
			n += subs[channel]
		}
		for _, node := range rc.Nodes {
			if node.Running() {
				count(node, "PUBSUB", "NUMSUB", channel)
			}
		}
		count(rc.MasterOf(rc.Slot(channel)), "PUBSUB", "SHARDNUMSUB", channel)
		return n
	}
	rc := cl.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subs, err := rc.Do(ctx, rc.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return subs[channel]
}

// On the routed bus an instance subscribes to a topic's channel while it
// has a subscriber of the topic (and a linger after the last one left):
// an instance that serves nobody on the topic receives none of its units.
func TestClusterRoutedSubscribesOnlyServedTopics(t *testing.T) {
	cl := startCluster(t, 2, clusterSite)
	const ch = "t:rt:bus:{news}"
	a := subscribedLegacy(t, cl.nodes[0], "news")
	if n := cl.numsub(t, ch); n != 1 {
		t.Fatalf("NUMSUB %s = %d with a subscriber on one instance, want 1", ch, n)
	}
	b := subscribedLegacy(t, cl.nodes[1], "news")
	if n := cl.numsub(t, ch); n != 2 {
		t.Fatalf("NUMSUB %s = %d with a subscriber on each instance, want 2", ch, n)
	}
	publish(t, cl.nodes[0], `{"topic":"news","event":"e","data":1,"seq":false}`)
	a.expect(`{"topic":"news","event":"e","data":1}`)
	b.expect(`{"topic":"news","event":"e","data":1}`)
	b.send(`{"type":"unsubscribe","topic":"news"}`)
	waitFor(t, 10*time.Second, "the unsubscription after the linger", func() bool { return cl.numsub(t, ch) == 1 })
	publish(t, cl.nodes[0], `{"topic":"news","event":"e","data":2,"seq":false}`)
	a.expect(`{"topic":"news","event":"e","data":2}`)
	b.quiet(300 * time.Millisecond)
}

// A subscribe that gives an instance its first subscriber of a topic is
// acked once Redis confirmed the topic's channel: a publish on another
// instance right after the ack reaches the subscriber, on a topic without
// seqs (nothing could fill a gap) too.
func TestClusterRoutedFirstSubscriberMissesNothing(t *testing.T) {
	for _, mode := range []string{"", "partitions 8"} {
		t.Run(fmt.Sprintf("%q", mode), func(t *testing.T) {
			cl := startClusterWith(t, 2, clusterSite, mode)
			warm := subscribedLegacy(t, cl.nodes[1], "warm")
			waitFor(t, 10*time.Second, "the bus", func() bool {
				publish(t, cl.nodes[0], `{"topic":"warm","event":"ping","data":0}`)
				select {
				case <-warm.frames:
					return true
				case <-time.After(200 * time.Millisecond):
					return false
				}
			})
			c := dial(t, cl.nodes[1])
			c.welcome()
			for i := range 20 {
				topic := fmt.Sprintf("fresh-%d", i)
				c.send(`{"type":"subscribe","topic":"` + topic + `","ref":1}`)
				c.expect(`{"type":"subscribed","topic":"` + topic + `","ref":1}`)
				publish(t, cl.nodes[0], `{"topic":"`+topic+`","event":"first","data":`+fmt.Sprint(i)+`,"seq":false}`)
				c.expect(`{"topic":"` + topic + `","event":"first","data":` + fmt.Sprint(i) + `}`)
			}
		})
	}
}

// A direct send to a user travels on the direct channel, which every
// instance subscribes to: the user's connections on another instance get it.
func TestClusterRoutedDirectSendReachesOtherInstances(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { authByBearer(w, c) })
	cl := startCluster(t, 2, authSite(app, ""))
	u := dialUser(t, cl.nodes[1], "u1")
	u.welcome()
	waitFor(t, 10*time.Second, "the direct send", func() bool {
		status, _ := apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/send"), "", `{"user":"u1","topic":"dm:u1","event":"new","data":1}`)
		if status != http.StatusOK {
			t.Fatalf("send: %d", status)
		}
		select {
		case f := <-u.frames:
			return string(f) == `{"topic":"dm:u1","event":"new","data":1}`
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
}

// In compat mode the reference package's channel carries the topic
// publishes only: a direct send crosses instances on the gateways' own
// channel, which a Node node (here a plain subscriber of uws:pubsub) never
// sees.
func TestClusterCompatKeepsGatewayTrafficOffTheNodeChannel(t *testing.T) {
	app := newApp(t, func(w http.ResponseWriter, c hookReq) { authByBearer(w, c) })
	cl := startClusterWith(t, 2, authSite(app, ""), "compat uws")
	node := cl.client(t)
	nodeGot := make(chan string, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = node.Receive(ctx, node.B().Subscribe().Channel("uws:pubsub").Build(), func(m rueidis.PubSubMessage) { nodeGot <- m.Message })
	}()
	waitFor(t, 10*time.Second, "the node's subscription", func() bool { return cl.numsub(t, "uws:pubsub") == 3 })
	u := dialUser(t, cl.nodes[1], "u1")
	u.welcome()
	waitFor(t, 10*time.Second, "the direct send", func() bool {
		status, _ := apiCall(t, http.MethodPost, cl.nodes[0].url("/_realtime/send"), "", `{"user":"u1","topic":"dm:u1","event":"new","data":1}`)
		if status != http.StatusOK {
			t.Fatalf("send: %d", status)
		}
		select {
		case f := <-u.frames:
			return string(f) == `{"topic":"dm:u1","event":"new","data":1}`
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
	publish(t, cl.nodes[0], `{"topic":"news","event":"e","data":1,"seq":false}`)
	select {
	case got := <-nodeGot:
		if !strings.Contains(got, `"topic":"news"`) {
			t.Fatalf("the node received %s first, want the news publish", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the node received nothing")
	}
	select {
	case got := <-nodeGot:
		t.Fatalf("the node received gateway traffic: %s", got)
	case <-time.After(300 * time.Millisecond):
	}
}
