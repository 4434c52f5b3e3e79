package handlers

import (
	"time"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// routeWait bounds how long a subscribe waits for the bus to confirm a
// topic's route: as long as the Redis bus's own call deadline.
const routeWait = 2 * time.Second

// routeHold asks the bus for topic's units from other instances, when the
// bus routes per topic (bus.Router). With wait, it returns once the bus
// confirmed the route, so that a subscribe acked after it misses no later
// publish: a topic without seqs has no other way to notice the gap. It
// does not wait while the bus is unhealthy (the resubscription after the
// outage calls OnResync, which fills the replayed topics) nor beyond
// routeWait.
func (g *Gateway) routeHold(topic string, wait bool) {
	if g.router == nil {
		return
	}
	ready := g.router.Hold(topic)
	if !wait || !g.healthy.Load() {
		return
	}
	select {
	case <-ready:
		return
	default:
	}
	t := time.NewTimer(routeWait)
	defer t.Stop()
	select {
	case <-ready:
	case <-t.C:
	case <-g.ctx.Done():
	}
}

// routeRelease undoes one routeHold.
func (g *Gateway) routeRelease(topic string) {
	if g.router != nil {
		g.router.Release(topic)
	}
}

// holdStaticRoutes holds, for the gateway's life, the routes of the
// configured groups, whose frames any instance may relay at any time: a
// group's members can be on every instance, and groups are few.
func (g *Gateway) holdStaticRoutes() {
	for name := range g.ext.groups {
		g.routeHold(wire.GroupPrefix+name, false)
	}
}
