package handlers

import (
	"context"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/cursor"
	"github.com/caddy-realtime/realtime/extensions/groups"
	"github.com/caddy-realtime/realtime/extensions/presence"
	"github.com/caddy-realtime/realtime/extensions/ratelimit"
	"github.com/caddy-realtime/realtime/extensions/replay"
)

// Backends builds the extensions' shared state. A nil field means the
// memory backend (this instance only); the root package sets Redis
// constructors when the realtime app has a redis option. Each is called
// once per configured rule when the gateway is built.
type Backends struct {
	Presence  func(cfg presence.Config) (presence.Tracker, error)
	Cursor    func(cfg cursor.Config) (cursor.Tracker, error)
	Groups    func(cfg groups.Config) (groups.Registry, error)
	RateLimit func(cfg ratelimit.Config) (ratelimit.Limiter, error)
}

func (b Backends) presence(cfg presence.Config) (presence.Tracker, error) {
	if b.Presence == nil {
		return presence.NewMemory(cfg), nil
	}
	return b.Presence(cfg)
}

func (b Backends) cursor(cfg cursor.Config) (cursor.Tracker, error) {
	if b.Cursor == nil {
		return cursor.NewMemory(cfg), nil
	}
	return b.Cursor(cfg)
}

func (b Backends) groups(cfg groups.Config) (groups.Registry, error) {
	if b.Groups == nil {
		return groups.NewMemory(cfg), nil
	}
	return b.Groups(cfg)
}

func (b Backends) rateLimit(cfg ratelimit.Config) (ratelimit.Limiter, error) {
	if b.RateLimit == nil {
		return ratelimit.NewMemory(cfg), nil
	}
	return b.RateLimit(cfg)
}

// Reachability is implemented by backends that know whether their server
// answers: presence.Redis (its change subscription) and replay.Postgres
// (its last call). /health lists the rules whose backend does not.
type Reachability interface {
	Reachable() bool
}

var (
	_ Reachability = (*presence.Redis)(nil)
	_ Reachability = (*replay.Postgres)(nil)
)

// each calls fn with every rule's backend, its kind and its pattern (a
// group's name, "" for the rate limit), in configuration order.
func (e *extensions) each(fn func(kind, pattern string, backend any)) {
	for _, r := range e.replay {
		fn("replay", string(r.pattern), r.store)
	}
	for _, r := range e.presence {
		fn("presence", string(r.pattern), r.tracker)
	}
	for _, r := range e.cursors {
		fn("cursor", string(r.pattern), r.tracker)
	}
	for _, gr := range e.groups {
		fn("group", gr.cfg.Name, gr.reg)
	}
	if e.rate != nil {
		fn("rate_limit", "", e.rate.limiter)
	}
}

// unreachable names the rules whose backend says it is unreachable, as
// "<kind> <pattern>", in configuration order; never nil.
func (e *extensions) unreachable() []string {
	out := []string{}
	e.each(func(kind, pattern string, b any) {
		if r, ok := b.(Reachability); ok && !r.Reachable() {
			out = append(out, kind+" "+pattern)
		}
	})
	return out
}

// closer is the lifecycle method of the backends that hold goroutines or
// connections, which each capability package names Closer; the guards
// below keep the method sets one.
type closer interface {
	Close(ctx context.Context) error
}

var (
	_ closer = presence.Closer(nil)
	_ closer = cursor.Closer(nil)
	_ closer = groups.Closer(nil)
	_ closer = bus.Closer(nil)
)

// close releases every backend that holds resources, bounded by ctx, and
// logs those that fail: a backend that could not remove its instance's
// members leaves them to expire on the other instances.
func (e *extensions) close(ctx context.Context, logger *zap.Logger) {
	e.each(func(kind, pattern string, b any) {
		c, ok := b.(closer)
		if !ok {
			return
		}
		if err := c.Close(ctx); err != nil {
			logger.Warn("closing a backend failed", zap.String("rule", kind), zap.String("pattern", pattern), zap.Error(err))
		}
	})
}
