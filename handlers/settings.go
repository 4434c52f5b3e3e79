package handlers

import (
	"strings"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// settings is a Config with defaults applied plus what is derived from it.
// It is immutable: Reconfigure swaps in a new one atomically.
type settings struct {
	Config

	public                  wire.Patterns
	anyOrigin, sameOrigin   bool
	origins                 map[string]bool
	authSem, subSem, msgSem chan struct{}

	// DropSlow is SlowConsumer == SlowConsumerDrop, read on every send.
	DropSlow bool

	// deflate compresses data frames for the connections that negotiated
	// permessage-deflate; nil: compression off.
	deflate *deflater
}

func newSettings(c Config) *settings {
	s := &settings{Config: c, origins: make(map[string]bool), DropSlow: c.SlowConsumer == SlowConsumerDrop}
	for _, p := range c.Public {
		s.public = append(s.public, wire.Pattern(p))
	}
	for _, o := range c.Origins {
		switch o {
		case "*":
			s.anyOrigin = true
		case "same-origin":
			s.sameOrigin = true
		default:
			s.origins[strings.ToLower(strings.TrimSuffix(o, "/"))] = true
		}
	}
	sem := func(h *HookConfig) chan struct{} {
		if h == nil {
			return nil
		}
		return make(chan struct{}, h.MaxInFlight)
	}
	s.authSem, s.subSem, s.msgSem = sem(c.Auth), sem(c.SubscribeHook), sem(c.MessageHook)
	if c.Compression != nil {
		s.deflate = newDeflater(*c.Compression)
	}
	return s
}

// isPublic reports whether configuration marks topic t public (§3.5).
func (s *settings) isPublic(t string) bool { return s.public.Match(t) >= 0 }
