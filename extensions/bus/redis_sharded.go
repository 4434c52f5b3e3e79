package bus

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/resub"
)

// On a Redis Cluster (rueidis in cluster mode) a routed bus without
// partitions puts each topic on a shard channel: SPUBLISH and SSUBSCRIBE
// of <prefix>rt:bus:{<topic>}, whose hash tag is that of the topic's
// replay keys. A unit then travels only to the master of the topic's
// slot and from it to the instances subscribed there, instead of being
// broadcast over the cluster bus to every node; the replay script stores
// an event and SPUBLISHes it in one step on that node; and since one
// topic's units all go through one node on one connection, per-topic
// order holds.
//
// Each held topic has a subscriber goroutine of its own, in a
// client.Receive of SSUBSCRIBE on the connection rueidis keeps to the
// slot's master: the connections are per node, shared by every topic of
// that node. When the master dies, or the slot moves (Redis then sends
// SUNSUBSCRIBE), Receive returns; rueidis refreshes its slot map, and the
// subscriber subscribes again, with the backoff of the other loops, on
// whichever node serves the slot then, and reports a resync (OnResync) once
// confirmed: units published in between are lost for this instance, and
// replay stores fill the gap.
//
// Direct sends and probes stay on classic channels, on the dedicated
// connection; partitions too (SPUBLISH of a partition channel could not
// share the slot of every topic hashed onto it). As a probe proves only the
// dedicated connection, the prober also counts a failure at each interval
// while a topic's shard subscription has been waiting for its
// confirmation for two intervals or more (shardsDown), and does not report
// the bus healthy again before every one is confirmed.

// sharded reports whether topic channels are shard channels now.
func (r *Redis) sharded() bool {
	return r.routing != nil && r.routing.Partitions == 0 && r.client.Mode() == rueidis.ClientModeCluster
}

// isTopicChannel reports whether channel is a routed topic's: only those
// hold '{' (Routing).
func isTopicChannel(channel string) bool { return strings.IndexByte(channel, '{') >= 0 }

// startShard starts the subscriber of a sharded route. The caller holds
// r.routes.mu.
func (r *Redis) startShard(ch string, rt *route) {
	t := &r.routes
	prev := t.stopping[ch]
	delete(t.stopping, ch)
	ctx, cancel := context.WithCancel(r.ctx)
	rt.state, rt.stop, rt.done, rt.sentAt = routeSent, cancel, make(chan struct{}), time.Now()
	r.wg.Add(1) // from the routed loop, itself counted: never at zero
	go r.shardLoop(ctx, ch, rt, prev)
}

// shardLoop keeps ch subscribed until ctx ends.
func (r *Redis) shardLoop(ctx context.Context, ch string, rt *route, prev <-chan struct{}) {
	defer r.wg.Done()
	defer func() {
		t := &r.routes
		t.mu.Lock()
		if t.stopping[ch] == rt.done {
			delete(t.stopping, ch)
		}
		t.mu.Unlock()
		close(rt.done)
	}()
	if prev != nil {
		select {
		case <-prev:
		case <-ctx.Done():
			return
		}
	}
	var confirmations atomic.Int64
	hook := func(s rueidis.PubSubSubscription) {
		if s.Kind != "ssubscribe" || s.Channel != ch {
			return
		}
		if confirmations.Add(1) > 1 {
			// Subscribed again after the subscription ended: units
			// may have been missed meanwhile.
			r.onResync()
		}
		t := &r.routes
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.routes[ch] == rt {
			rt.state = routeConfirmed
			if !rt.closed {
				rt.closed = true
				close(rt.ready)
			}
		}
	}
	resub.Loop(ctx, func() (bool, error) {
		before := confirmations.Load()
		err := r.client.Receive(rueidis.WithOnSubscriptionHook(ctx, hook), r.client.B().Ssubscribe().Channel(ch).Build(), r.onMessage)
		if ctx.Err() != nil {
			if r.ctx.Err() == nil {
				r.sunsubscribe(ch)
			}
			return false, err
		}
		r.routes.mu.Lock()
		if r.routes.routes[ch] == rt && rt.state == routeConfirmed {
			rt.state, rt.sentAt = routeSent, time.Now()
		}
		r.routes.mu.Unlock()
		return confirmations.Load() != before, err
	}, func(err error, wait time.Duration) {
		r.onError(fmt.Errorf("bus: shard subscription to %q ended (resubscribing in %s): %w", ch, wait, err))
	})
}

// shardsDown reports whether a sharded route has waited for its
// confirmation for longer than d.
func (r *Redis) shardsDown(now time.Time, d time.Duration) bool {
	if !r.sharded() {
		return false
	}
	t := &r.routes
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, rt := range t.routes {
		if rt.stop != nil && rt.state != routeConfirmed && now.Sub(rt.sentAt) >= d {
			return true
		}
	}
	return false
}

// sunsubscribe ends the server's side of an expired route's subscription:
// a Receive that returns for its context only stops listening. A failure
// leaves the connection subscribed, and the channel's units are dropped
// on arrival, until that connection is replaced.
func (r *Redis) sunsubscribe(ch string) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.client.Do(ctx, r.client.B().Sunsubscribe().Channel(ch).Build()).Error(); err != nil {
		r.onError(fmt.Errorf("bus: unsubscribing %q: %w", ch, err))
	}
}
