package handlers

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// AnswerWait is how long POST /send and POST /groups/publish wait for the
// other instances' delivery counts (docs/api.md §2): an instance that has
// not answered by then is left out of "delivered", and the answer says
// "partial": true. Answers on one Redis take about a round trip to Redis
// and back (well under a millisecond on a LAN), so only an instance that
// is stopped or cut off makes a call wait this long.
const AnswerWait = 500 * time.Millisecond

// deliveredAnswer is the body of a send or group publish: with other
// instances, Instances counts those that answered (this one included) and
// Partial says that one the message reached did not answer in time.
type deliveredAnswer struct {
	Delivered int   `json:"delivered"`
	Instances *int  `json:"instances,omitempty"`
	Partial   *bool `json:"partial,omitempty"`
}

// deliverElsewhere carries m to the other instances and adds what they
// delivered to local, this instance's count. Alone (no tally), m is relayed
// on the bus by relay, if set, and the count is local. It must not be
// called under a lock: it waits for the other instances, up to AnswerWait.
func (g *Gateway) deliverElsewhere(r *http.Request, m bus.Message, local int, relay func()) deliveredAnswer {
	if g.tally == nil {
		if relay != nil {
			relay()
		}
		return deliveredAnswer{Delivered: local}
	}
	ctx, cancel := context.WithTimeout(r.Context(), AnswerWait)
	defer cancel()
	a, err := g.tally.Ask(ctx, m)
	if err != nil {
		g.logger.Warn("carrying a delivery to the other instances failed; local connections got it", zap.String("topic", m.Topic), zap.Error(err))
	}
	instances, partial := 1+a.Answered, err != nil || a.Partial()
	return deliveredAnswer{Delivered: local + a.Delivered, Instances: &instances, Partial: &partial}
}

// deliverAsked delivers a message another instance asked for through the
// tally (a direct send or a group publish) and returns how many local
// connections it reached. It runs on the tally's goroutine and only
// enqueues.
func (g *Gateway) deliverAsked(m bus.Message) int {
	if wire.IsSystem(m.Topic) {
		return g.deliverSystem(m)
	}
	if m.User == "" {
		return 0
	}
	return g.sendUser(m.User, wire.AppendEnvelope(nil, m.Topic, m.Event, m.Data, 0))
}
