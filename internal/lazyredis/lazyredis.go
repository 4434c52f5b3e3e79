// Package lazyredis is a rueidis.Client that can exist before its Redis
// does: Caddy must start, and serve locally, while Redis is unreachable,
// but rueidis.NewClient fails when it cannot dial. A Client
// tries rueidis.NewClient once in New; if that fails it answers every
// command with ErrNotConnected while one goroutine retries with a capped
// backoff, and from the first success on it delegates every call to the
// real client, which reconnects by itself after later outages.
//
// Every method is safe for concurrent use. The retry goroutine is the only
// one this package starts; Close stops it.
package lazyredis

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of Config.
const (
	DefaultMinBackoff = 250 * time.Millisecond // Config.MinBackoff
	DefaultMaxBackoff = 5 * time.Second        // Config.MaxBackoff
)

var (
	// ErrNotConnected means the Client has not reached Redis yet: the call
	// was not sent, and a background goroutine keeps trying to connect.
	ErrNotConnected = errors.New("redis: not connected yet (retrying)")

	// errBuiltEarly means a command built before the connection, when the
	// Client could not know it would talk to a Redis Cluster, was given to
	// a Cluster client, which needs each command's slot.
	errBuiltEarly = errors.New("redis: command built before the cluster connection was made (retry it)")
)

// noSlot is rueidis's slot marker of commands built for a non-cluster
// client (cmds.NoSlot, internal to rueidis).
const noSlot = uint16(1 << 15)

// Config configures a Client. Option is required; every other zero field
// takes its default.
type Config struct {
	// Option is what rueidis.NewClient is called with, at every attempt.
	Option rueidis.ClientOption

	// MinBackoff is the delay before the first background attempt; it
	// doubles after each failure up to MaxBackoff. Defaults:
	// DefaultMinBackoff, DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// OnError receives the error of every failed attempt, New's first one
	// included (from New's goroutine, before New returns), then those of
	// the retry goroutine, one at a time. The error comes from rueidis and
	// may name the address, never the password. It must not block.
	// Default: nil.
	OnError func(err error)

	// OnConnect is called once, from the retry goroutine, when a
	// background attempt succeeds; not when New's own attempt does. It
	// must not block. Default: nil.
	OnConnect func()
}

// Client is a rueidis.Client that connects in the background (see the
// package comment). Commands built with B before the connection can still
// be sent after it, except to a Redis Cluster, which refuses them with an
// error (they carry no slot).
type Client struct {
	cfg Config

	inner atomic.Pointer[rueidis.Client] // nil until connected

	mu     sync.Mutex // guards closed and the hand-over of inner
	closed bool

	cancel context.CancelFunc
	done   chan struct{} // closed when the retry goroutine ends
}

// New returns a Client of cfg.Option. It tries rueidis.NewClient once,
// which takes up to the option's dial timeout; if that fails, the Client
// starts unconnected and retries in the background. New never fails:
// reject bad configuration (a URL that does not parse) before calling it.
// The caller must Close the Client.
func New(cfg Config) *Client {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	c := &Client{cfg: cfg, done: make(chan struct{})}
	inner, err := rueidis.NewClient(cfg.Option)
	if err == nil {
		c.inner.Store(&inner)
		c.cancel = func() {}
		close(c.done)
		return c
	}
	c.report(err)
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.connectLoop(ctx)
	return c
}

// Connected reports whether the Client has reached Redis once; it does
// not say whether Redis is reachable now.
func (c *Client) Connected() bool { return c.inner.Load() != nil }

func (c *Client) report(err error) {
	if c.cfg.OnError != nil {
		c.cfg.OnError(err)
	}
}

// connectLoop retries rueidis.NewClient until it succeeds or Close.
func (c *Client) connectLoop(ctx context.Context) {
	defer close(c.done)
	backoff := c.cfg.MinBackoff
	for {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		inner, err := rueidis.NewClient(c.cfg.Option)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.report(err)
			backoff = min(2*backoff, c.cfg.MaxBackoff)
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			inner.Close()
			return
		}
		c.inner.Store(&inner)
		c.mu.Unlock()
		if c.cfg.OnConnect != nil {
			c.cfg.OnConnect()
		}
		return
	}
}

// client returns the connected client, or nil with the error a call
// must answer.
func (c *Client) client() (rueidis.Client, error) {
	if p := c.inner.Load(); p != nil {
		return *p, nil
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, rueidis.ErrClosing
	}
	return nil, ErrNotConnected
}

// earlyBuilder is a builder for commands made before the connection. A
// rueidis Builder cannot be made outside rueidis, so it comes from a
// single-node client whose dial fails at once without touching the
// network; such a builder computes no slot, so no command panics as
// cross-slot before the Client knows whether it talks to a Cluster.
var earlyBuilder = sync.OnceValue(func() rueidis.Builder {
	refuse := func(context.Context, string, *net.Dialer, *tls.Config) (net.Conn, error) {
		return nil, ErrNotConnected
	}
	c, _ := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{"lazyredis.invalid:0"}, ForceSingleClient: true, DialCtxFn: refuse,
	})
	defer c.Close()
	return c.B()
})

// B implements rueidis.Client: the real client's builder once connected.
func (c *Client) B() rueidis.Builder {
	if p := c.inner.Load(); p != nil {
		return (*p).B()
	}
	return earlyBuilder()
}

// usable reports whether a command built with slot can go to inner.
func usable(inner rueidis.Client, slot uint16) bool {
	return slot != noSlot || inner.Mode() != rueidis.ClientModeCluster
}

// Do implements rueidis.Client.
func (c *Client) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	inner, err := c.client()
	if err == nil && !usable(inner, cmd.Slot()) {
		err = errBuiltEarly
	}
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	return inner.Do(ctx, cmd)
}

// DoMulti implements rueidis.Client.
func (c *Client) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	inner, err := c.client()
	for i := 0; err == nil && i < len(multi); i++ {
		if !usable(inner, multi[i].Slot()) {
			err = errBuiltEarly
		}
	}
	if err != nil {
		return errorResults(len(multi), err)
	}
	return inner.DoMulti(ctx, multi...)
}

func errorResults(n int, err error) []rueidis.RedisResult {
	out := make([]rueidis.RedisResult, n)
	for i := range out {
		out[i] = rueidis.NewErrorResult(err)
	}
	return out
}

// Receive implements rueidis.Client. Unconnected, it returns
// ErrNotConnected at once: callers restart it, as after any error.
func (c *Client) Receive(ctx context.Context, subscribe rueidis.Completed, fn func(msg rueidis.PubSubMessage)) error {
	inner, err := c.client()
	if err == nil && !usable(inner, subscribe.Slot()) {
		err = errBuiltEarly
	}
	if err != nil {
		return err
	}
	return inner.Receive(ctx, subscribe, fn)
}

// DoCache implements rueidis.Client.
func (c *Client) DoCache(ctx context.Context, cmd rueidis.Cacheable, ttl time.Duration) rueidis.RedisResult {
	inner, err := c.client()
	if err == nil && !usable(inner, cmd.Slot()) {
		err = errBuiltEarly
	}
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	return inner.DoCache(ctx, cmd, ttl)
}

// DoMultiCache implements rueidis.Client.
func (c *Client) DoMultiCache(ctx context.Context, multi ...rueidis.CacheableTTL) []rueidis.RedisResult {
	inner, err := c.client()
	for i := 0; err == nil && i < len(multi); i++ {
		if !usable(inner, multi[i].Cmd.Slot()) {
			err = errBuiltEarly
		}
	}
	if err != nil {
		return errorResults(len(multi), err)
	}
	return inner.DoMultiCache(ctx, multi...)
}

// DoStream implements rueidis.Client.
func (c *Client) DoStream(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResultStream {
	inner, err := c.client()
	if err == nil && !usable(inner, cmd.Slot()) {
		err = errBuiltEarly
	}
	if err != nil {
		return rueidis.NewErrorResultStream(err)
	}
	return inner.DoStream(ctx, cmd)
}

// DoMultiStream implements rueidis.Client.
func (c *Client) DoMultiStream(ctx context.Context, multi ...rueidis.Completed) rueidis.MultiRedisResultStream {
	inner, err := c.client()
	for i := 0; err == nil && i < len(multi); i++ {
		if !usable(inner, multi[i].Slot()) {
			err = errBuiltEarly
		}
	}
	if err != nil {
		return rueidis.NewErrorResultStream(err)
	}
	return inner.DoMultiStream(ctx, multi...)
}

// Dedicated implements rueidis.Client; unconnected, it returns
// ErrNotConnected without calling fn.
func (c *Client) Dedicated(fn func(rueidis.DedicatedClient) error) error {
	inner, err := c.client()
	if err != nil {
		return err
	}
	return inner.Dedicated(fn)
}

// Dedicate implements rueidis.Client; unconnected, it returns a
// DedicatedClient that answers every call with ErrNotConnected.
func (c *Client) Dedicate() (rueidis.DedicatedClient, func()) {
	inner, err := c.client()
	if err != nil {
		return refused{err}, func() {}
	}
	return inner.Dedicate()
}

// Nodes implements rueidis.Client. Unconnected, it lists the Client
// itself under the first configured address, so that a caller walking
// the nodes gets ErrNotConnected rather than silently visiting none.
func (c *Client) Nodes() map[string]rueidis.Client {
	if inner, err := c.client(); err == nil {
		return inner.Nodes()
	}
	addr := "redis"
	if len(c.cfg.Option.InitAddress) > 0 {
		addr = c.cfg.Option.InitAddress[0]
	}
	return map[string]rueidis.Client{addr: c}
}

// Mode implements rueidis.Client: standalone until connected.
func (c *Client) Mode() rueidis.ClientMode {
	if inner, err := c.client(); err == nil {
		return inner.Mode()
	}
	return rueidis.ClientModeStandalone
}

// Close implements rueidis.Client: it stops the retry goroutine, waits for
// it (at most one dial timeout), and closes the real client if there is
// one. Later calls answer rueidis.ErrClosing. Closing twice is harmless.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	<-c.done
	if p := c.inner.Load(); p != nil {
		(*p).Close()
	}
}

// refused is the DedicatedClient of an unconnected Client.
type refused struct{ err error }

func (r refused) B() rueidis.Builder { return earlyBuilder() }
func (r refused) Do(context.Context, rueidis.Completed) rueidis.RedisResult {
	return rueidis.NewErrorResult(r.err)
}
func (r refused) DoMulti(_ context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	return errorResults(len(multi), r.err)
}
func (r refused) Receive(context.Context, rueidis.Completed, func(rueidis.PubSubMessage)) error {
	return r.err
}
func (r refused) SetPubSubHooks(rueidis.PubSubHooks) <-chan error              { return r.closedErr() }
func (r refused) SetOnInvalidations(func([]rueidis.RedisMessage)) <-chan error { return r.closedErr() }
func (r refused) Close()                                                       {}

// closedErr is the hooks' error channel: the hooks will never be called.
func (r refused) closedErr() <-chan error {
	ch := make(chan error, 1)
	ch <- r.err
	close(ch)
	return ch
}

// Interface guards
var (
	_ rueidis.Client          = (*Client)(nil)
	_ rueidis.DedicatedClient = refused{}
)
