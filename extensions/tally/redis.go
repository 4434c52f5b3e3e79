package tally

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/internal/resub"
)

// Defaults of RedisConfig.
const (
	DefaultTimeout    = 2 * time.Second // RedisConfig.Timeout
	DefaultMaxPending = 1024            // RedisConfig.MaxPending
)

// ErrClosed means Ask was called after Close.
var ErrClosed = errors.New("tally: closed")

// RedisConfig configures a Redis Tally. InstanceID and Handler are
// required; every other zero field takes its default.
type RedisConfig struct {
	// KeyPrefix starts both channel names (see Redis). Default: "".
	KeyPrefix string

	// Gateway names the gateway in the channel names, so that gateways of
	// different names on one Redis answer only their own. Default: "".
	Gateway string

	// InstanceID names this instance: the channel its answers arrive on,
	// and the instanceId of the envelopes it asks with. It must be unique
	// in the cluster. Required.
	InstanceID string

	// Handler delivers the messages other instances ask for. Required.
	Handler Handler

	// EnvelopeOptions are the envelope rules of asked messages, both
	// directions, as on the bus (the system topics a gateway relays).
	// Default: the zero value, the strictest.
	EnvelopeOptions envelope.Options

	// Timeout is the deadline of every answers' PUBLISH round trip.
	// Default: DefaultTimeout.
	Timeout time.Duration

	// MaxPending caps the received messages waiting for the Handler;
	// beyond it they are dropped (their askers count this instance as not
	// answering), as the subscriber must never block its connection.
	// Default: DefaultMaxPending.
	MaxPending int

	// OnError is called with every failure (a Redis call, a refused
	// message, a Handler panic), possibly from several goroutines. It must
	// not block. Default: nil.
	OnError func(err error)
}

// Redis is a Tally on Redis pub/sub, on two channels:
//
//	<prefix>rt:tally:<gateway>:ask                every instance subscribes: asked messages
//	<prefix>rt:tally:<gateway>:answer:<instance>  the instance's answers
//
// An asked message is "<id> <envelope>", id a number the asker picks and
// the envelope the bus's (package envelope) with the asker's instanceId.
// The reply of PUBLISH says how many instances subscribe to the ask
// channel, the asker included: that is how many answers Ask waits for. An
// answer is "<id> <count> <instance>", PUBLISHed to the asker's channel;
// Ask keeps one per instance.
//
// An instance SIGKILLed, or whose connection Redis closed, is no
// subscriber any more and is not waited for; one that is stopped or cut
// off without Redis noticing is, until Ask's ctx ends.
//
// On a Redis Cluster both are shard channels (SPUBLISH, SSUBSCRIBE): a
// classic PUBLISH would count the subscribers of one node only, while
// SPUBLISH reaches and counts every subscriber of the channel, all on its
// slot's master. A failover or a slot move ends the subscription, which
// is made again on the new master.
//
// Goroutines: 2 (subscriber, answerer), 3 on a Redis Cluster (a subscriber
// per channel); Close stops them.
type Redis struct {
	client   rueidis.Client
	id       string
	ask      string // channel of asked messages
	answers  string // this instance's answer channel
	prefix   string // <prefix>rt:tally:<gateway>:answer:, the answer channels' start
	opts     envelope.Options
	handler  Handler
	timeout  time.Duration
	onError  func(error)
	own      string // how this instance's asked envelopes start, after the id
	received chan asked

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	next atomic.Uint64 // the last id asked with

	mu      sync.Mutex // guards waiting
	waiting map[uint64]*waiter

	sharded    bool        // on a Redis Cluster: shard channels
	subscribed atomic.Bool // the ask channel's subscription is confirmed
	dropped    atomic.Uint64
	closeOnce  sync.Once
}

// asked is one message another instance asked for.
type asked struct {
	id   string // the asker's request id, as received
	from string // the asker's instance id
	msg  envelope.Message
}

// waiter collects the answers to one Ask.
type waiter struct {
	sum, answered int
	reached       int // -1 until PUBLISH answered
	from          map[string]struct{}
	done          chan struct{}
	closed        bool
}

func (w *waiter) check() {
	if !w.closed && w.reached >= 0 && w.answered >= w.reached {
		w.closed = true
		close(w.done)
	}
}

// NewRedis returns a Redis Tally on client and starts its goroutines. It
// does not wait for Redis: while the subscription is down, this instance
// answers nobody and its asks time out. The caller must Close it, and
// closes client after.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	switch {
	case client == nil:
		return nil, errors.New("tally: no Redis client")
	case cfg.InstanceID == "":
		return nil, errors.New("tally: an instance id is required")
	case cfg.Handler == nil:
		return nil, errors.New("tally: a handler is required")
	case cfg.Timeout < 0:
		return nil, errors.New("tally: negative timeout")
	}
	r := &Redis{
		client:   client,
		id:       cfg.InstanceID,
		ask:      cfg.KeyPrefix + "rt:tally:" + cfg.Gateway + ":ask",
		prefix:   cfg.KeyPrefix + "rt:tally:" + cfg.Gateway + ":answer:",
		opts:     cfg.EnvelopeOptions,
		handler:  cfg.Handler,
		timeout:  cmp.Or(cfg.Timeout, DefaultTimeout),
		onError:  cfg.OnError,
		own:      envelope.Prefix(cfg.InstanceID),
		received: make(chan asked, positiveOr(cfg.MaxPending, DefaultMaxPending)),
		waiting:  make(map[uint64]*waiter),
	}
	r.answers = r.prefix + r.id
	r.sharded = client.Mode() == rueidis.ClientModeCluster
	if r.onError == nil {
		r.onError = func(error) {}
	}
	// Ids start from the clock, so that a late answer to a previous process
	// of the same instance id matches nothing.
	r.next.Store(uint64(time.Now().UnixNano()))
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.sharded {
		// Two slots: one subscription each.
		r.wg.Add(3)
		go r.subscribeLoop(r.ask)
		go r.subscribeLoop(r.answers)
	} else {
		r.wg.Add(2)
		go r.subscribeLoop(r.ask, r.answers)
	}
	go r.answerLoop()
	return r, nil
}

func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Ask implements Tally.
func (r *Redis) Ask(ctx context.Context, m envelope.Message) (Answer, error) {
	if r.ctx.Err() != nil {
		return Answer{Reached: -1}, ErrClosed
	}
	env, err := envelope.Encode(r.id, []envelope.Message{m}, r.opts)
	if err != nil {
		return Answer{Reached: -1}, err
	}
	id := r.next.Add(1)
	payload := strconv.AppendUint(make([]byte, 0, len(env)+21), id, 10)
	payload = append(append(payload, ' '), env...)
	w := &waiter{reached: -1, from: make(map[string]struct{}), done: make(chan struct{})}
	r.mu.Lock()
	r.waiting[id] = w
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiting, id)
		r.mu.Unlock()
	}()
	n, err := r.client.Do(ctx, r.publish(r.ask, rueidis.BinaryString(payload))).AsInt64()
	if err != nil {
		return Answer{Reached: -1}, fmt.Errorf("tally: publishing on %q: %w", r.ask, err)
	}
	if r.subscribed.Load() {
		n-- // this instance's own subscription
	}
	r.mu.Lock()
	w.reached = max(int(n), 0)
	w.check()
	r.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
	case <-r.ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return Answer{Delivered: w.sum, Answered: w.answered, Reached: w.reached}, nil
}

// subscribeLoop keeps a Receive of channels running until Close, and
// tells whether the ask channel's subscription is confirmed; rueidis
// resubscribes it after a reconnection, this loop after it ended.
//
// On a standalone or Sentinel-managed server, both channels share one
// connection of its own: Redis counts subscribers by connection, and two
// gateways of one process share the client's. On a Redis Cluster, each
// is a shard channel (SSUBSCRIBE) on the connection rueidis keeps to its
// slot's master, where SPUBLISH delivers and counts its subscribers.
func (r *Redis) subscribeLoop(channels ...string) {
	defer r.wg.Done()
	resub.Loop(r.ctx, func() (bool, error) {
		hook := func(s rueidis.PubSubSubscription) {
			if (s.Kind == "subscribe" || s.Kind == "ssubscribe") && s.Channel == r.ask {
				r.subscribed.Store(true)
			}
		}
		ctx := rueidis.WithOnSubscriptionHook(r.ctx, hook)
		var err error
		if r.sharded {
			err = r.client.Receive(ctx, r.client.B().Ssubscribe().Channel(channels...).Build(), r.onMessage)
		} else {
			dc, release := r.client.Dedicate()
			err = dc.Receive(ctx, dc.B().Subscribe().Channel(channels...).Build(), r.onMessage)
			dc.Close()
			release()
		}
		confirmed := false
		if slices.Contains(channels, r.ask) {
			confirmed = r.subscribed.Swap(false)
		}
		return confirmed, err
	}, func(err error, wait time.Duration) {
		r.onError(fmt.Errorf("tally: subscription to %q ended (resubscribing in %s): %w", channels, wait, err))
	})
}

// publish builds the PUBLISH (SPUBLISH on a Redis Cluster) of msg on
// channel.
func (r *Redis) publish(channel, msg string) rueidis.Completed {
	if r.sharded {
		return r.client.B().Spublish().Channel(channel).Message(msg).Build()
	}
	return r.client.B().Publish().Channel(channel).Message(msg).Build()
}

// onMessage runs on the Receive goroutine, fed by rueidis's connection
// reader: it parses and hands off without blocking.
func (r *Redis) onMessage(m rueidis.PubSubMessage) {
	switch m.Channel {
	case r.answers:
		r.onAnswer(m.Message)
	case r.ask:
		id, env, ok := strings.Cut(m.Message, " ")
		if !ok || !validID(id) {
			r.onError(fmt.Errorf("tally: dropping a malformed message on %q", r.ask))
			return
		}
		if strings.HasPrefix(env, r.own) {
			return // ours: the asker counts its own deliveries
		}
		from, msgs, err := envelope.Decode([]byte(env), r.opts)
		if err == nil && len(msgs) != 1 {
			err = errors.New("not one message")
		}
		if err == nil && from == r.id {
			return
		}
		if err != nil {
			r.onError(fmt.Errorf("tally: dropping a message received on %q: %w", r.ask, err))
			return
		}
		select {
		case r.received <- asked{id: id, from: from, msg: msgs[0]}:
		default:
			r.dropped.Add(1)
		}
	}
}

func validID(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// onAnswer adds one instance's answer "<id> <count> <instance>" to its
// waiter, if it still waits. The instance id is the rest of the message,
// spaces included.
func (r *Redis) onAnswer(s string) {
	idS, rest, ok1 := strings.Cut(s, " ")
	nS, from, ok2 := strings.Cut(rest, " ")
	id, err1 := strconv.ParseUint(idS, 10, 64)
	n, err2 := strconv.Atoi(nS)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || n < 0 || from == "" {
		r.onError(fmt.Errorf("tally: dropping a malformed answer on %q", r.answers))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.waiting[id]
	if w == nil {
		return // answered too late
	}
	if _, dup := w.from[from]; dup {
		return
	}
	w.from[from] = struct{}{}
	w.sum += n
	w.answered++
	w.check()
}

// maxAnswerBatch bounds the answers sent in one round trip.
const maxAnswerBatch = 64

// answerLoop delivers the asked messages through the Handler and sends
// the counts back, those of everything waiting in one round trip.
func (r *Redis) answerLoop() {
	defer r.wg.Done()
	var b bytes.Buffer
	for {
		var a asked
		select {
		case <-r.ctx.Done():
			return
		case a = <-r.received:
		}
		// A fresh slice each time: a round trip that timed out may still
		// hold its commands.
		cmds := make(rueidis.Commands, 0, 4)
		cmds = append(cmds, r.answer(&b, a))
	drain:
		for len(cmds) < maxAnswerBatch {
			select {
			case a = <-r.received:
				cmds = append(cmds, r.answer(&b, a))
			default:
				break drain
			}
		}
		// Not r.ctx: Close waits for the answers already counted.
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		for _, res := range r.client.DoMulti(ctx, cmds...) {
			if err := res.Error(); err != nil {
				r.onError(fmt.Errorf("tally: answering: %w", err))
				break
			}
		}
		cancel()
	}
}

// answer delivers one asked message and builds the PUBLISH of its count.
func (r *Redis) answer(b *bytes.Buffer, a asked) rueidis.Completed {
	n := r.handle(a.msg)
	b.Reset()
	b.WriteString(a.id)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(n))
	b.WriteByte(' ')
	b.WriteString(r.id)
	return r.publish(r.prefix+a.from, b.String())
}

func (r *Redis) handle(m envelope.Message) (n int) {
	defer func() {
		if p := recover(); p != nil {
			n = 0
			r.onError(fmt.Errorf("tally: handler panicked (answering 0): %v\n%s", p, debug.Stack()))
		}
	}()
	return r.handler(m)
}

// Dropped reports how many asked messages were dropped because MaxPending
// were already waiting for the Handler.
func (r *Redis) Dropped() uint64 { return r.dropped.Load() }

// Close implements Closer.
func (r *Redis) Close(ctx context.Context) error {
	r.closeOnce.Do(r.cancel)
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tally: waiting for the redis tally to stop: %w", ctx.Err())
	}
}

// Interface guards
var (
	_ Tally  = (*Redis)(nil)
	_ Closer = (*Redis)(nil)
)
