package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/internal/resub"
)

// DefaultChannel is the default RedisConfig.Channel, the reference
// package's bus channel.
const DefaultChannel = "uws:pubsub"

// StoreInstanceID is the instanceId reserved for envelopes published by a
// replay store's append (replay.BusAppender, envelope.AppendStore): such an
// envelope reaches every instance, the one whose append published it
// included, as that instance does not deliver the event locally. No bus
// may use it as its own InstanceID.
const StoreInstanceID = envelope.StoreInstanceID

// Defaults of RedisConfig.
const (
	DefaultQueueSize        = 4096            // RedisConfig.QueueSize
	DefaultQueueBytes       = 64 << 20        // RedisConfig.QueueBytes
	DefaultRedisMaxPending  = 4096            // RedisConfig.MaxPending
	DefaultProbeInterval    = time.Second     // RedisConfig.ProbeInterval
	DefaultFailureThreshold = 3               // RedisConfig.FailureThreshold
	DefaultRedisTimeout     = 2 * time.Second // RedisConfig.Timeout
)

// ErrBackpressure means Publish found the Redis bus's send queue full
// (RedisConfig.QueueSize units or QueueBytes bytes waiting): Redis is slower
// than the publishers or unreachable with calls timing out. The unit was not
// relayed; local delivery, the caller's, is unaffected.
var ErrBackpressure = errors.New("bus: send queue full")

// RedisConfig configures a Redis bus. InstanceID and Handler are required;
// every other zero field takes its default.
type RedisConfig struct {
	// Channel is the Redis channel every instance PUBLISHes and SUBSCRIBEs
	// on when Routing is nil. Default: DefaultChannel, so instances
	// interoperate with nodes of the reference package.
	Channel string

	// GatewayChannel, when set without Routing, carries the units that
	// only gateways understand: direct sends and "__" topics (cursor and
	// group frames). Nodes of the reference package on Channel then never
	// see them: a 0.1.2 node would deliver such a frame to its own
	// subscribers. Every instance subscribes to it beside Channel.
	// Default: "", everything on Channel.
	GatewayChannel string

	// Routing, when set, makes the bus route per topic (see Routing and
	// Router) instead of sending every unit on Channel, which it then
	// ignores. Nodes of the reference package know only the one channel.
	// Default: nil.
	Routing *Routing

	// InstanceID names this instance in its envelopes, so that it drops
	// its own units when Redis echoes them. It must be unique in the
	// cluster, and must not be StoreInstanceID. Required.
	InstanceID string

	// Handler receives the units published by other instances (and by
	// outside publishers and replay stores), from one goroutine of the bus,
	// one call at a time, in the order Redis delivered them. It must not
	// block. A panic in it is recovered and reported to OnError; delivery
	// goes on with the next unit. Required.
	Handler Handler

	// EnvelopeOptions are the envelope rules for both directions: size
	// cap, non-ASCII topics, allowed system topics. Default: the zero
	// value, the strictest.
	EnvelopeOptions EnvelopeOptions

	// QueueSize caps the units accepted by Publish and not yet sent to
	// Redis; beyond it, Publish returns ErrBackpressure. Default:
	// DefaultQueueSize.
	QueueSize int

	// QueueBytes caps the bytes of those units' envelopes, likewise.
	// Default: DefaultQueueBytes.
	QueueBytes int

	// MaxPending caps the received units waiting for Handler; beyond it,
	// received units are dropped and counted (Dropped), as the subscriber
	// must never block the connection it shares with other commands.
	// Default: DefaultRedisMaxPending.
	MaxPending int

	// ProbeInterval is how often the bus PUBLISHes a probe to the channel
	// <Channel>:probe:<InstanceID>, which it subscribes to as well. A
	// probe not received back within two intervals counts as a failure
	// and restarts the subscription: a connection can look alive and
	// receive nothing (centrifugal/centrifugo#1189). Default:
	// DefaultProbeInterval.
	ProbeInterval time.Duration

	// FailureThreshold is how many consecutive failures (a failed relay
	// round trip, a failed probe PUBLISH, a probe not received back) make
	// the bus unhealthy. The next probe received back makes it healthy.
	// Default: DefaultFailureThreshold.
	FailureThreshold int

	// Timeout is the deadline of every Redis call the bus makes (a relay
	// round trip, a probe), and how long NewRedis waits for the first
	// subscription. Default: DefaultRedisTimeout.
	Timeout time.Duration

	// OnHealth is called with false when the bus becomes unhealthy and
	// with true when it recovers, from one goroutine, once per change, in
	// order. A bus starts healthy (NewRedis returns once subscribed), or
	// unhealthy with StartUnreachable, and Close does not call it. It must
	// not block. Default: nil.
	OnHealth func(healthy bool)

	// OnResync is called when units may have been missed: each time the
	// subscription (with Routing: to the direct channel, which is
	// resubscribed after every topic channel) is confirmed (the first time too: a bus started
	// unreachable may already have subscribers to serve), after a
	// reconnection or a restart,
	// and when a received unit was dropped because the Handler fell
	// behind. Units published in between are lost for this instance; a
	// gateway compares the topics it delivers with their replay stores
	// then (docs/protocol.md §5.1 rule 7). It must not block. Default: nil.
	OnResync func()

	// StartUnreachable makes NewRedis return a bus whose first subscription
	// was not confirmed within Timeout instead of failing: it starts
	// unhealthy (OnHealth(false) is called before NewRedis returns) and
	// recovers as after an outage once Redis answers. A gateway sets it to
	// start, or reload, while Redis is down. Default: false.
	StartUnreachable bool

	// OnError is called with every failure: a Redis call that failed, a
	// refused envelope, a subscription that ended, a Handler panic. It may
	// be called from several goroutines at once, and often during an
	// outage; the caller rate-limits its logging. It must not block.
	// Default: nil.
	OnError func(err error)
}

// Redis is the Bus of a gateway cluster on one Redis server: every
// instance PUBLISHes its units on one channel and SUBSCRIBEs to it, in the
// envelope format of the package comment, so it interoperates with nodes
// of the reference package and with any process that PUBLISHes an
// envelope (validated like all outside input).
//
// Publish encodes the unit (validating it), appends it to a bounded queue
// and returns. One writer goroutine takes everything queued at each
// wake-up and sends it in one round trip: one PUBLISH per unit, several
// pipelined in one DoMulti. Units are not folded into one envelope: a
// batch envelope would merge the Handler calls of several units, and
// reference nodes know no other way to carry several. Since one goroutine
// sends and waits for each round trip before the next, Redis receives the
// units in queue order, which is publish order.
//
// The subscriber is one client.Receive on the client's shared connection,
// which rueidis re-subscribes after a reconnection;
// the bus restarts it itself, with backoff, when it returns or when
// probes stop coming back. Its callback only decodes and validates each
// envelope (the size cap before parsing), drops this instance's own, and
// hands the unit to a dispatcher goroutine through a bounded channel: it
// never blocks, as that would stall every command on the connection
// (rueidis#596). Envelopes from StoreInstanceID are delivered even here.
//
// A prober goroutine publishes a probe every ProbeInterval and tracks
// health (OnHealth, Healthy). Delivery is at most once: units relayed while
// Redis or a subscriber is unreachable are lost (Lost counts the ones this
// instance failed to send), and replay stores are the recovery path.
//
// With RedisConfig.Routing the bus routes per topic instead (Routing,
// Router): each unit goes to its topic's (or partition's) channel, and the
// subscriber is a dedicated connection whose SUBSCRIBEs and UNSUBSCRIBEs
// follow Hold and Release, batched, and are all sent again after a
// reconnection.
//
// On a Redis Cluster, a routed bus without partitions uses sharded
// Pub/Sub (SPUBLISH/SSUBSCRIBE per topic, redis_sharded.go): per-topic
// order holds, and one publisher's units to different topics may arrive in
// either order. Compat mode and partitions keep classic PUBLISH, which a
// Cluster broadcasts to every node's subscribers; rueidis sends each
// keyless command to an arbitrary node, and two round trips through
// different nodes may arrive in either order, so there per-publisher order
// holds only on a standalone or Sentinel-managed server.
//
// Goroutines: 4 (writer, subscriber, prober, dispatcher), plus one that
// waits for them; Close stops them all.
type Redis struct {
	client        rueidis.Client
	channel       string
	probeChannel  string
	routing       *Routing // nil: every unit on channel
	gwChannel     string   // without routing: direct sends and system topics; "" for channel
	directChannel string   // with routing
	routes        routeTable
	id            string
	ownPrefix     string // how this instance's envelopes start
	opts          EnvelopeOptions
	handler       Handler
	onHealth      func(bool)
	onResync      func()
	onError       func(error)
	queueSize     int
	queueBytes    int
	interval      time.Duration
	threshold     int
	timeout       time.Duration

	ctx    context.Context // canceled by Close; ends every goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup
	exited chan struct{} // closed once wg is done

	mu     sync.Mutex // guards queue, queued and closed
	queue  []outUnit  // encoded envelopes waiting for the writer
	queued int        // bytes in queue
	closed bool
	wake   chan struct{} // one slot: the queue has work

	closing atomic.Bool
	healthy atomic.Bool

	deliveries chan []Message // subscriber → dispatcher

	subMu      sync.Mutex
	subCancel  context.CancelFunc // ends the current Receive
	firstSub   chan struct{}      // closed at the first confirmed subscription
	subOnce    sync.Once
	subscribed atomic.Uint64 // confirmed subscriptions to the bus channel, counting re-subscriptions

	sent      atomic.Uint64 // highest probe nonce published
	acked     atomic.Uint64 // highest probe nonce received back
	probeAck  chan struct{} // one slot: a probe came back
	failed    atomic.Int64  // relay round trips failed, not yet counted by the prober
	failedAt  atomic.Int64  // when the latest failed round trip started, as nanoseconds since epoch
	epoch     time.Time     // monotonic origin of failedAt
	failedSig chan struct{} // one slot: failed moved

	dropped, invalid, lost atomic.Uint64

	closeOnce sync.Once
}

// NewRedis returns a Redis bus on client, configured by cfg, once its
// subscription is confirmed (within cfg.Timeout; otherwise it stops and
// returns an error, or with cfg.StartUnreachable returns an unhealthy bus
// that keeps trying). The caller must Close it, which stops its goroutines;
// the caller keeps ownership of client and closes it after the bus.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	switch {
	case client == nil:
		return nil, errors.New("bus: no Redis client")
	case cfg.InstanceID == "":
		return nil, errors.New("bus: an instance id is required")
	case cfg.InstanceID == StoreInstanceID:
		return nil, fmt.Errorf("bus: the instance id %q is reserved for replay stores", StoreInstanceID)
	case cfg.Handler == nil:
		return nil, errors.New("bus: a handler is required")
	case cfg.ProbeInterval < 0 || cfg.Timeout < 0:
		return nil, errors.New("bus: negative probe interval or timeout")
	}
	if _, err := envelope.Encode(cfg.InstanceID, []Message{{Topic: "t", Event: "e"}}, cfg.EnvelopeOptions); err != nil {
		return nil, fmt.Errorf("bus: instance id %q: %w", cfg.InstanceID, err)
	}
	r := &Redis{
		client:     client,
		channel:    cmp.Or(cfg.Channel, DefaultChannel),
		gwChannel:  cfg.GatewayChannel,
		id:         cfg.InstanceID,
		opts:       cfg.EnvelopeOptions,
		handler:    cfg.Handler,
		onHealth:   cfg.OnHealth,
		onResync:   cfg.OnResync,
		onError:    cfg.OnError,
		queueSize:  positiveOr(cfg.QueueSize, DefaultQueueSize),
		queueBytes: positiveOr(cfg.QueueBytes, DefaultQueueBytes),
		interval:   cmp.Or(cfg.ProbeInterval, DefaultProbeInterval),
		threshold:  positiveOr(cfg.FailureThreshold, DefaultFailureThreshold),
		timeout:    cmp.Or(cfg.Timeout, DefaultRedisTimeout),
		exited:     make(chan struct{}),
		wake:       make(chan struct{}, 1),
		deliveries: make(chan []Message, positiveOr(cfg.MaxPending, DefaultRedisMaxPending)),
		firstSub:   make(chan struct{}),
		probeAck:   make(chan struct{}, 1),
		failedSig:  make(chan struct{}, 1),
	}
	if r.onHealth == nil {
		r.onHealth = func(bool) {}
	}
	if r.onError == nil {
		r.onError = func(error) {}
	}
	if r.onResync == nil {
		r.onResync = func() {}
	}
	r.probeChannel = r.channel + ":probe:" + r.id
	if cfg.Routing != nil {
		rt := *cfg.Routing
		if strings.ContainsAny(rt.Prefix, "{}") || rt.Partitions < 0 || rt.Linger < 0 {
			return nil, fmt.Errorf("bus: routing prefix %q holds '{' or '}', or a negative partition count or linger", rt.Prefix)
		}
		rt.Linger = cmp.Or(rt.Linger, DefaultLinger)
		r.routing = &rt
		r.probeChannel = rt.probeChannel(r.id)
		r.directChannel = rt.DirectChannel()
		r.channel = r.directChannel // what subscription errors name
		r.routes.init()
	}
	r.ownPrefix = envelope.Prefix(r.id)
	r.healthy.Store(true)
	r.epoch = time.Now()
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(3)
	go r.writeLoop()
	if r.routing != nil {
		go r.routedLoop()
	} else {
		go r.subscribeLoop()
	}
	go r.dispatchLoop()

	confirmed := false
	t := time.NewTimer(r.timeout)
	select {
	case <-r.firstSub:
		confirmed = true
	case <-t.C:
	}
	t.Stop()
	// The prober owns the health state once started: the initial state is
	// set before it starts, so OnHealth calls stay ordered.
	if confirmed || cfg.StartUnreachable {
		if !confirmed {
			r.healthy.Store(false)
			r.onHealth(false)
		}
		r.wg.Add(1)
		go r.probeLoop()
	}
	go func() {
		r.wg.Wait()
		close(r.exited)
	}()
	if confirmed || cfg.StartUnreachable {
		return r, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	_ = r.Close(ctx)
	return nil, fmt.Errorf("bus: redis did not confirm the subscription to %q within %s", r.channel, r.timeout)
}

func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Publish implements Bus. It encodes msgs as one envelope (ErrInvalidMessage,
// ErrTooLarge) and queues it for the writer without waiting for Redis;
// ErrBackpressure when the queue is full. A unit queued is sent even if
// Redis is down (and then lost, counted by Lost).
func (r *Redis) Publish(ctx context.Context, msgs []Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.closing.Load() {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	units, size, err := r.encode(msgs)
	if err != nil {
		return err
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return ErrClosed
	case len(r.queue)+len(units) > r.queueSize || r.queued+size > r.queueBytes:
		r.mu.Unlock()
		return ErrBackpressure
	}
	r.queue = append(r.queue, units...)
	r.queued += size
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default: // a wake-up is pending; the writer takes the whole queue
	}
	return nil
}

// writeLoop sends the queue until Close, then sends what is left once.
func (r *Redis) writeLoop() {
	defer r.wg.Done()
	var batch []outUnit
	cmds := make(rueidis.Commands, 0, 64)
	for {
		stop := false
		select {
		case <-r.wake:
		case <-r.ctx.Done():
			stop = true
		}
		r.mu.Lock()
		batch, r.queue = r.queue, batch[:0]
		r.queued = 0
		r.mu.Unlock()
		if len(batch) > 0 {
			cmds = r.send(batch, cmds[:0])
			clear(batch) // let the envelopes go
			clear(cmds)
		}
		if stop {
			return
		}
	}
}

// send PUBLISHes batch in one round trip, with its own deadline: Close
// waits for it rather than cancel it, so units accepted before Close are
// still sent.
func (r *Redis) send(batch []outUnit, cmds rueidis.Commands) rueidis.Commands {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	var err error
	lost := 0
	sharded := r.sharded()
	if len(batch) == 1 {
		err = r.client.Do(ctx, r.publishCmd(batch[0].channel, batch[0].env, sharded)).Error()
		if err != nil {
			lost = 1
		}
	} else {
		for _, u := range batch {
			cmds = append(cmds, r.publishCmd(u.channel, u.env, sharded))
		}
		for _, res := range r.client.DoMulti(ctx, cmds...) {
			if e := res.Error(); e != nil {
				err = e
				lost++
			}
		}
	}
	if err != nil {
		r.lost.Add(uint64(lost))
		r.failedAt.Store(int64(start.Sub(r.epoch))) // only this goroutine stores it
		r.failed.Add(1)
		signal(r.failedSig)
		r.onError(fmt.Errorf("bus: relaying %d of %d units to redis (at most once: they are lost): %w", lost, len(batch), err))
	}
	return cmds
}

// publishCmd is a PUBLISH, or with sharded channels an SPUBLISH for a
// topic channel. rueidis sends a batch's SPUBLISHes of one slot in order
// on one connection, so that a topic's units keep their order.
func (r *Redis) publishCmd(channel string, env []byte, sharded bool) rueidis.Completed {
	// The envelope is never modified after Publish encoded it, so the
	// zero-copy string is safe.
	if sharded && isTopicChannel(channel) {
		return r.client.B().Spublish().Channel(channel).Message(rueidis.BinaryString(env)).Build()
	}
	return r.client.B().Publish().Channel(channel).Message(rueidis.BinaryString(env)).Build()
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// subscribeLoop keeps one Receive of the bus and probe channels running
// until Close.
func (r *Redis) subscribeLoop() {
	r.resubscribing("subscription to "+strconv.Quote(r.channel), func(ctx context.Context) error {
		channels := []string{r.channel, r.probeChannel}
		if r.gwChannel != "" {
			channels = append(channels, r.gwChannel)
		}
		return r.client.Receive(rueidis.WithOnSubscriptionHook(ctx, r.onSubscription),
			r.client.B().Subscribe().Channel(channels...).Build(), r.onMessage)
	})
}

// resubscribing runs serve until Close, again after each end
// (resub.Loop). restartSubscription ends the current run at once. It is a
// goroutine of r.wg.
func (r *Redis) resubscribing(what string, serve func(ctx context.Context) error) {
	defer r.wg.Done()
	resub.Loop(r.ctx, func() (bool, error) {
		ctx, cancel := context.WithCancel(r.ctx)
		defer cancel()
		r.subMu.Lock()
		r.subCancel = cancel
		r.subMu.Unlock()
		before := r.subscribed.Load()
		err := serve(ctx)
		return r.subscribed.Load() != before, err
	}, func(err error, wait time.Duration) {
		if !errors.Is(err, context.Canceled) { // not a restart asked by the prober
			r.onError(fmt.Errorf("bus: %s ended (resubscribing in %s): %w", what, wait, err))
		}
	})
}

// restartSubscription ends the current Receive; subscribeLoop starts
// another.
func (r *Redis) restartSubscription() {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	if r.subCancel != nil {
		r.subCancel()
	}
}

// onSubscription runs on rueidis's connection reader: it must not block.
func (r *Redis) onSubscription(s rueidis.PubSubSubscription) {
	if s.Kind == "subscribe" && s.Channel == r.channel {
		r.subscribed.Add(1)
		r.onResync()
		r.subOnce.Do(func() { close(r.firstSub) })
	}
}

// onMessage runs on the Receive goroutine, which rueidis's connection
// reader feeds through a 16-slot channel: blocking here would stall every
// command on the connection, so it decodes and hands off without waiting.
func (r *Redis) onMessage(m rueidis.PubSubMessage) {
	if m.Channel == r.probeChannel {
		// Only this goroutine stores acked. A nonce not sent yet is forged:
		// taking it would hide every later lost probe.
		if n, err := strconv.ParseUint(m.Message, 10, 64); err == nil && n > r.acked.Load() && n <= r.sent.Load() {
			r.acked.Store(n)
			signal(r.probeAck)
		}
		return
	}
	if r.routing == nil && m.Channel != r.channel && (r.gwChannel == "" || m.Channel != r.gwChannel) {
		return
	}
	// Redis echoes every unit to its publisher, so in a cluster of two,
	// half of what arrives is ours: recognizing it by the prefix
	// envelope.Encode writes skips its decoding (BenchmarkRedisDropEcho, a
	// small unit on a busy 2-core machine: 8-80 ns and no allocation
	// against 0.75-2 µs and 5 allocations). An outside envelope that starts like ours, claiming
	// our id, is dropped as decoding it would be, unless it repeated
	// "instanceId" further on.
	if strings.HasPrefix(m.Message, r.ownPrefix) {
		return
	}
	id, msgs, err := envelope.Decode([]byte(m.Message), r.opts)
	if err != nil {
		r.invalid.Add(1)
		r.onError(fmt.Errorf("bus: dropping an envelope received on %q: %w", m.Channel, err))
		return
	}
	if id == r.id {
		return // our own unit, echoed by Redis
	}
	select {
	case r.deliveries <- msgs:
	default:
		r.dropped.Add(1)
		r.onResync()
	}
}

// dispatchLoop hands received units to the Handler, in order, until Close.
func (r *Redis) dispatchLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case msgs := <-r.deliveries:
			if r.ctx.Err() != nil {
				return
			}
			r.handle(msgs)
		}
	}
}

func (r *Redis) handle(msgs []Message) {
	defer func() {
		if p := recover(); p != nil {
			r.onError(fmt.Errorf("bus: handler panicked (delivery continues): %v\n%s", p, debug.Stack()))
		}
	}()
	r.handler(msgs)
}

var errProbeLost = errors.New("probe not received back within two probe intervals")

// probeLoop publishes probes and owns the health state, so that OnHealth
// calls are serialized and ordered.
func (r *Redis) probeLoop() {
	defer r.wg.Done()
	ticker := time.NewTicker(r.interval)
	defer ticker.Stop()
	var (
		nonce, pending uint64 // last probe sent; the oldest not received back (0: none)
		pendingSince   time.Time
		healthySince   = time.Since(r.epoch) // when the last probe received back was sent
		failures       int
	)
	fail := func(n int) {
		failures = min(failures+n, r.threshold) // capped: recovery needs one success, whatever the outage's length
		if failures >= r.threshold && r.healthy.Load() {
			r.healthy.Store(false)
			r.onHealth(false)
		}
	}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.failedSig:
			// Round trips that started before the probe that last proved
			// the bus healthy are stale: counting them would report a
			// recovered bus unhealthy again.
			if n := r.failed.Swap(0); r.failedAt.Load() >= int64(healthySince) {
				fail(int(n))
			}
		case <-r.probeAck:
			if pending != 0 && r.acked.Load() >= pending {
				healthySince = pendingSince.Sub(r.epoch)
				pending = 0
				if r.shardsDown(time.Now(), 2*r.interval) {
					break // some topics' subscriptions are still down
				}
				failures = 0
				if !r.healthy.Load() {
					r.healthy.Store(true)
					r.onHealth(true)
				}
			}
		case now := <-ticker.C:
			if r.shardsDown(now, 2*r.interval) {
				fail(1)
			}
			if pending != 0 && now.Sub(pendingSince) >= 2*r.interval {
				pending = 0
				r.onError(fmt.Errorf("bus: %w on %q (resubscribing)", errProbeLost, r.probeChannel))
				fail(1)
				r.restartSubscription()
			}
			nonce++
			r.sent.Store(nonce)
			ctx, cancel := context.WithTimeout(r.ctx, min(r.timeout, r.interval))
			err := r.client.Do(ctx, r.client.B().Publish().Channel(r.probeChannel).Message(strconv.FormatUint(nonce, 10)).Build()).Error()
			cancel()
			switch {
			case r.ctx.Err() != nil:
				return
			case err != nil:
				r.onError(fmt.Errorf("bus: publishing a probe: %w", err))
				fail(1)
			case pending == 0:
				pending, pendingSince = nonce, now
			}
		}
	}
}

// Close implements Closer: it stops accepting units, sends those already
// queued (within Timeout), stops the subscription and every goroutine and
// waits for them until ctx ends. The Handler is not called after Close
// returns nil. Healthy reports false from the start of Close; OnHealth is
// not called. Close leaves the client open: the caller closes it after.
func (r *Redis) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		r.closing.Store(true)
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
	})
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bus: waiting for the redis bus to stop: %w", ctx.Err())
	}
}

// Healthy implements Healther: false after FailureThreshold consecutive
// failures until a probe comes back, and after Close.
func (r *Redis) Healthy() bool { return r.healthy.Load() && !r.closing.Load() }

// Dropped reports how many received units were dropped because MaxPending
// units were already waiting for the Handler.
func (r *Redis) Dropped() uint64 { return r.dropped.Load() }

// Invalid reports how many received envelopes were refused by the envelope
// rules (EnvelopeOptions) and dropped.
func (r *Redis) Invalid() uint64 { return r.invalid.Load() }

// Lost reports how many units Publish accepted whose round trip to Redis
// failed. Those that failed by timing out may still have reached Redis
// late; the others are lost.
func (r *Redis) Lost() uint64 { return r.lost.Load() }

// Interface guards
var (
	_ Bus            = (*Redis)(nil)
	_ Closer         = (*Redis)(nil)
	_ Healther       = (*Redis)(nil)
	_ DropCounter    = (*Redis)(nil)
	_ InvalidCounter = (*Redis)(nil)
)
