package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// outUnit is one envelope waiting for the writer, with its channel.
type outUnit struct {
	channel string
	env     []byte
}

// channelOf returns the channel one message travels on.
func (r *Redis) channelOf(m *Message) string {
	switch {
	case r.routing != nil:
		return r.routing.channelOf(m)
	case r.gwChannel != "" && (m.User != "" || wire.IsSystem(m.Topic)):
		return r.gwChannel
	}
	return r.channel
}

// encode validates and encodes msgs: one envelope per channel its
// messages travel on (one, but with Routing or GatewayChannel), each
// holding its messages in order. size is the envelopes' total length.
func (r *Redis) encode(msgs []Message) (units []outUnit, size int, err error) {
	if r.routing == nil && r.gwChannel == "" {
		env, err := envelope.Encode(r.id, msgs, r.opts)
		return []outUnit{{r.channel, env}}, len(env), err
	}
	first := r.channelOf(&msgs[0])
	split := false
	for i := 1; i < len(msgs) && !split; i++ {
		split = r.channelOf(&msgs[i]) != first
	}
	if !split {
		env, err := envelope.Encode(r.id, msgs, r.opts)
		return []outUnit{{first, env}}, len(env), err
	}
	var order []string
	groups := make(map[string][]Message)
	for i := range msgs {
		ch := r.channelOf(&msgs[i])
		if _, ok := groups[ch]; !ok {
			order = append(order, ch)
		}
		groups[ch] = append(groups[ch], msgs[i])
	}
	units = make([]outUnit, 0, len(order))
	for _, ch := range order {
		env, err := envelope.Encode(r.id, groups[ch], r.opts)
		if err != nil {
			return nil, 0, err
		}
		units = append(units, outUnit{ch, env})
		size += len(env)
	}
	return units, size, nil
}

// routeState is where a channel's subscription stands on the current
// connection.
type routeState uint8

const (
	routeUnsent    routeState = iota // SUBSCRIBE not sent on this connection yet
	routeSent                        // sent, not confirmed
	routeConfirmed                   // Redis confirmed it
)

// route is one channel wanted by holders (or lingering after the last).
type route struct {
	refs   int
	idle   time.Time // when refs fell to 0
	state  routeState
	ready  chan struct{} // closed at the first confirmation
	closed bool          // ready is closed

	// With sharded channels: the route's own subscriber goroutine.
	stop   context.CancelFunc // nil until started
	done   chan struct{}      // closed when it has returned
	sentAt time.Time          // when it last began waiting for a confirmation
}

// routeTable is the channels a routed bus wants; the routed loop makes
// the connection's subscriptions follow it.
type routeTable struct {
	mu     sync.Mutex
	routes map[string]*route
	dirty  chan struct{} // one slot: a route needs a SUBSCRIBE
	// stopping holds, per sharded channel whose route expired, the done
	// channel of its subscriber until it returned: a new subscriber of the
	// channel waits for it, so that the old SUNSUBSCRIBE cannot end the
	// new subscription.
	stopping map[string]chan struct{}
}

func (t *routeTable) init() {
	t.routes = make(map[string]*route)
	t.dirty = make(chan struct{}, 1)
	t.stopping = make(map[string]chan struct{})
}

var closedReady = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Hold implements Router. Without Routing every unit reaches every
// instance, so the channel it returns is already closed.
func (r *Redis) Hold(topic string) <-chan struct{} {
	if r.routing == nil {
		return closedReady
	}
	ch := r.routing.TopicChannel(topic)
	t := &r.routes
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.routes[ch]
	if rt == nil {
		rt = &route{ready: make(chan struct{})}
		t.routes[ch] = rt
		signal(t.dirty)
	}
	rt.refs++
	return rt.ready
}

// Release implements Router.
func (r *Redis) Release(topic string) {
	if r.routing == nil {
		return
	}
	ch := r.routing.TopicChannel(topic)
	t := &r.routes
	t.mu.Lock()
	defer t.mu.Unlock()
	if rt := t.routes[ch]; rt != nil && rt.refs > 0 {
		rt.refs--
		if rt.refs == 0 {
			rt.idle = time.Now()
		}
	}
}

// Subscriptions reports how many topic channels the bus wants subscribed
// (held or lingering); 0 without Routing.
func (r *Redis) Subscriptions() int {
	if r.routing == nil {
		return 0
	}
	r.routes.mu.Lock()
	defer r.routes.mu.Unlock()
	return len(r.routes.routes)
}

// routedLoop keeps one dedicated connection subscribed to the wanted
// channels until Close, reconnecting with backoff.
func (r *Redis) routedLoop() {
	r.resubscribing("routed subscription", func(ctx context.Context) error {
		return r.serveRoutes(ctx)
	})
}

// batchChannels caps the channels of one SUBSCRIBE or UNSUBSCRIBE, so that
// resubscribing thousands of topics after a reconnection is a few commands
// of bounded size in one round trip.
const batchChannels = 512

// serveRoutes runs one connection: it subscribes everything wanted (the
// direct and probe channels last, so that their confirmation, which calls
// OnResync, comes after every topic's), then follows the route table until
// the connection fails or ctx ends.
func (r *Redis) serveRoutes(ctx context.Context) error {
	// Decided per connection: a client that started before its Redis
	// answered knows whether it is a Cluster only once connected.
	sharded := r.sharded()
	dc, release := r.client.Dedicate()
	defer release()
	defer dc.Close()
	errs := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: r.onMessage, OnSubscription: r.onRouteSubscription})
	r.routes.mu.Lock()
	for _, rt := range r.routes.routes {
		// A shard subscriber outlives this connection; a route without
		// one (classic, or not started before the client knew it was a
		// Cluster's) is subscribed again.
		if !sharded || rt.stop == nil {
			rt.state = routeUnsent
		}
	}
	r.routes.mu.Unlock()
	tick := time.NewTicker(max(r.routing.Linger/2, 10*time.Millisecond))
	defer tick.Stop()
	first := true
	for {
		select {
		case err := <-errs:
			if err == nil {
				err = errors.New("connection closed")
			}
			return err
		default:
		}
		if err := r.reconcile(ctx, dc, first, sharded); err != nil {
			return err
		}
		first = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if err == nil {
				err = errors.New("connection closed")
			}
			return err
		case <-r.routes.dirty:
		case <-tick.C:
		}
	}
}

// reconcile sends, in one round trip, the SUBSCRIBEs of the routes not
// sent on this connection and the UNSUBSCRIBEs of those that lingered
// past Routing.Linger. A route waiting for its confirmation never expires:
// a later SUBSCRIBE of the same channel could otherwise take its
// confirmation. With sharded channels the topic routes are not on this
// connection: it starts and stops their subscribers instead.
func (r *Redis) reconcile(ctx context.Context, dc rueidis.DedicatedClient, first, sharded bool) error {
	now := time.Now()
	var sub, unsub []string
	t := &r.routes
	t.mu.Lock()
	for ch, rt := range t.routes {
		switch {
		case sharded && rt.refs == 0 && now.Sub(rt.idle) >= r.routing.Linger:
			if rt.stop != nil {
				rt.stop()
				t.stopping[ch] = rt.done
			}
			delete(t.routes, ch)
		case sharded && rt.state == routeUnsent:
			r.startShard(ch, rt)
		case sharded:
		case rt.refs == 0 && rt.state != routeSent && now.Sub(rt.idle) >= r.routing.Linger:
			if rt.state == routeConfirmed {
				unsub = append(unsub, ch)
			}
			delete(t.routes, ch)
		case rt.state == routeUnsent:
			rt.state = routeSent
			sub = append(sub, ch)
		}
	}
	t.mu.Unlock()
	if first {
		sub = append(sub, r.directChannel, r.probeChannel)
	}
	if len(sub) == 0 && len(unsub) == 0 {
		return nil
	}
	var cmds rueidis.Commands
	for len(unsub) > 0 {
		n := min(len(unsub), batchChannels)
		cmds = append(cmds, dc.B().Unsubscribe().Channel(unsub[:n]...).Build())
		unsub = unsub[n:]
	}
	for len(sub) > 0 {
		n := min(len(sub), batchChannels)
		cmds = append(cmds, dc.B().Subscribe().Channel(sub[:n]...).Build())
		sub = sub[n:]
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	for _, res := range dc.DoMulti(cctx, cmds...) {
		if err := res.Error(); err != nil {
			return fmt.Errorf("changing subscriptions: %w", err)
		}
	}
	return nil
}

// onRouteSubscription runs on rueidis's hook goroutine: it must not
// block.
func (r *Redis) onRouteSubscription(s rueidis.PubSubSubscription) {
	if s.Kind != "subscribe" {
		return
	}
	if s.Channel == r.directChannel {
		r.subscribed.Add(1)
		r.onResync()
		r.subOnce.Do(func() { close(r.firstSub) })
		return
	}
	t := &r.routes
	t.mu.Lock()
	defer t.mu.Unlock()
	if rt := t.routes[s.Channel]; rt != nil && rt.state == routeSent {
		rt.state = routeConfirmed
		if !rt.closed {
			rt.closed = true
			close(rt.ready)
		}
	}
}

var _ Router = (*Redis)(nil)
