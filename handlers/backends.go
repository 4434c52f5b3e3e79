package handlers

import (
	"context"
	"fmt"

	"go.uber.org/zap"

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

// unreachable names the rules whose backend says it is unreachable, as
// "<kind> <pattern>", in configuration order; never nil.
func (e *extensions) unreachable() []string {
	out := []string{}
	add := func(kind, pattern string, b any) {
		if r, ok := b.(Reachability); ok && !r.Reachable() {
			out = append(out, kind+" "+pattern)
		}
	}
	for _, r := range e.replay {
		add("replay", string(r.pattern), r.store)
	}
	for _, r := range e.presence {
		add("presence", string(r.pattern), r.tracker)
	}
	for _, r := range e.cursors {
		add("cursor", string(r.pattern), r.tracker)
	}
	for _, gr := range e.groups {
		add("group", gr.cfg.Name, gr.reg)
	}
	if e.rate != nil {
		add("rate_limit", "", e.rate.limiter)
	}
	return out
}

// closer is implemented by backends that hold goroutines or connections.
type closer interface {
	Close(ctx context.Context) error
}

// close releases every backend that holds resources, bounded by ctx.
func (e *extensions) close(ctx context.Context) {
	var all []any
	for _, r := range e.replay {
		all = append(all, r.store)
	}
	for _, r := range e.presence {
		all = append(all, r.tracker)
	}
	for _, r := range e.cursors {
		all = append(all, r.tracker)
	}
	for _, gr := range e.groups {
		all = append(all, gr.reg)
	}
	if e.rate != nil {
		all = append(all, e.rate.limiter)
	}
	for _, b := range all {
		var err error
		switch c := b.(type) {
		case closer:
			err = c.Close(ctx)
		case interface{ Shutdown(context.Context) error }:
			// groups.Registry's Close(ctx, name) closes a group, so its
			// backends stop with Shutdown.
			err = c.Shutdown(ctx)
		}
		if err != nil && e.logger != nil {
			e.logger.Warn("closing a backend failed", zap.String("backend", fmt.Sprintf("%T", b)), zap.Error(err))
		}
	}
}
