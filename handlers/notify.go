package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/notify"
	"github.com/caddy-realtime/realtime/extensions/replay"
)

// Reasons the bridge itself drops a notification (the listener's own are
// notify.Reason*).
const (
	// reasonSharedStore: mode all on a topic replayed in a shared store.
	// Every instance would append the same notification, so the buffer
	// would hold it once per instance under different seqs.
	reasonSharedStore = "shared_store"
	// reasonPublishFailed: the replay store refused the append.
	reasonPublishFailed = "publish_failed"
)

// notifyBridge turns the notifications of one PostgreSQL channel into
// publishes. In leader mode one listener per cluster (the holder of the
// channel's advisory lock) publishes through the normal path, so the
// replay store stamps one seq and the bus reaches every instance. In mode
// all every instance listens and delivers to its own clients only, as it
// delivers events relayed by the bus.
//
// Its callbacks run on the listener's goroutine, one at a time.
type notifyBridge struct {
	g      *Gateway
	cfg    NotifyConfig
	l      *notify.Listener
	logger *zap.Logger

	recvMetric prometheus.Counter
	received   atomic.Uint64
	dropped    atomic.Uint64
	leader     atomic.Bool
	failing    atomic.Bool // the last session ended in an error: log the next one at debug only
	warned     sync.Map    // *replayRule → struct{}: the shared-store warning was logged
}

// NotifyStats is one notify channel's state, as GET /stats reports it.
type NotifyStats struct {
	Channel  string `json:"channel"`
	Mode     string `json:"mode"`  // all | leader
	State    string `json:"state"` // connecting | standby | listening | closed
	Leader   bool   `json:"leader,omitempty"`
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
}

// newNotify builds a bridge per channel, not started: a bad config fails
// New before anything runs.
func (g *Gateway) newNotify(cfgs []NotifyConfig, allowNonASCII bool) ([]*notifyBridge, error) {
	var out []*notifyBridge
	for _, c := range cfgs {
		b := &notifyBridge{
			g:          g,
			cfg:        c,
			logger:     g.logger.Named("notify").With(zap.String("channel", c.Channel)),
			recvMetric: metricNotifyReceived.WithLabelValues(g.m.name, c.Channel),
		}
		lc := notify.Config{
			ConnString:          c.ConnString,
			Channel:             c.Channel,
			TopicField:          c.TopicField,
			EventField:          c.EventField,
			DataField:           c.DataField,
			Handler:             func(n notify.Notification) { g.safely("notify handler", func() { b.handle(n) }) },
			OnDrop:              b.drop,
			OnError:             b.onError,
			OnListen:            b.onListen,
			AllowNonASCIITopics: allowNonASCII,
		}
		if c.Mode == NotifyLeader {
			lc.LeaderLock = notify.LockID(c.Channel)
			lc.LeaderPoll = c.PollInterval
			lc.OnLeader = b.onLeader
		} else {
			lc.OnReconnect = b.resync
		}
		l, err := notify.NewListener(lc)
		if err != nil {
			closeNotify(context.Background(), out)
			return nil, fmt.Errorf("notify %q: %w", c.Channel, err)
		}
		b.l = l
		out = append(out, b)
	}
	return out, nil
}

// closeNotify stops the listeners, bounded by ctx; a leader's lock goes
// with its connection.
func closeNotify(ctx context.Context, bridges []*notifyBridge) {
	for _, b := range bridges {
		if err := b.l.Close(ctx); err != nil {
			b.logger.Warn("closing the notify listener failed", zap.Error(err))
		}
	}
}

func (b *notifyBridge) mode() string {
	if b.cfg.Mode == NotifyLeader {
		return string(NotifyLeader)
	}
	return string(NotifyAll)
}

// handle publishes one notification.
func (b *notifyBridge) handle(n notify.Notification) {
	b.received.Add(1)
	b.recvMetric.Inc()
	g := b.g
	// The payload's bytes may hold spaces and newlines; frames and stored
	// entries carry compact JSON, as API publishes do.
	var data bytes.Buffer
	if json.Compact(&data, n.Data) != nil {
		b.drop(notify.ReasonInvalid) // the listener parsed it: not reached
		return
	}
	m := bus.Message{Topic: n.Topic, Event: n.Event, Data: data.Bytes()}
	if b.cfg.Mode == NotifyLeader {
		ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
		defer cancel()
		if err := g.publish(ctx, []bus.Message{m}, nil, "notify"); err != nil {
			b.drop(reasonPublishFailed) // publish logged it
		}
		return
	}
	if r := g.replayFor(m.Topic); r != nil {
		if _, memory := r.store.(*replay.Memory); !memory {
			b.drop(reasonSharedStore)
			if _, logged := b.warned.LoadOrStore(r, struct{}{}); !logged {
				b.logger.Warn("notify mode all drops notifications for topics replayed in a shared store, which would store each once per instance; use mode leader",
					zap.String("topic", m.Topic), zap.String("replay", r.cfg.Topics))
			}
			return
		}
	}
	// Local delivery only, like an event relayed by the bus: every other
	// instance hears the same notification itself.
	if _, err := g.hub.publish([]bus.Message{m}, true, nil, g.now()); err != nil {
		b.drop(reasonPublishFailed)
		b.logger.Warn("notify: the replay store refused a notification; it was not delivered", zap.String("topic", m.Topic), zap.Error(err))
		return
	}
	g.m.published("notify", 1)
}

func (b *notifyBridge) drop(reason string) {
	b.dropped.Add(1)
	metricNotifyDropped.WithLabelValues(b.g.m.name, b.cfg.Channel, reason).Inc()
}

// onError logs the first failure after a healthy session at warn and the
// retries that follow at debug: one warning per outage, not one a second.
// err carries no password (the listener redacts it).
func (b *notifyBridge) onError(err error) {
	if b.failing.Swap(true) {
		b.logger.Debug("notify listener still cannot reach PostgreSQL", zap.Error(err))
		return
	}
	msg := "notify listener lost PostgreSQL: notifications sent until it is back are lost (retrying every 1s)"
	if b.cfg.Resync != "" {
		msg += "; clients get resync on " + b.cfg.Resync + " when it is"
	}
	b.logger.Warn(msg, zap.Error(err))
}

func (b *notifyBridge) onListen() {
	if b.failing.Swap(false) {
		b.logger.Info("notify listener is back", zap.String("mode", b.mode()))
	} else {
		b.logger.Debug("notify listener is listening", zap.String("mode", b.mode()))
	}
}

// onLeader records leadership; taking it is a gap to resync: the previous
// leader's last notifications, or those sent while nobody led, are lost.
func (b *notifyBridge) onLeader(leader bool) {
	b.leader.Store(leader)
	if !leader {
		b.logger.Info("this instance no longer leads the notify channel")
		return
	}
	b.logger.Info("this instance leads the notify channel", zap.String("instance", b.g.instanceID))
	b.resync()
}

// resync tells clients on the configured topic that notifications may
// have been lost, through the normal publish path (stored when the topic
// is replayed, so clients resuming later learn it too).
func (b *notifyBridge) resync() {
	if b.cfg.Resync == "" {
		return
	}
	data, _ := json.Marshal(struct {
		Channel string `json:"channel"`
	}{b.cfg.Channel})
	ctx, cancel := context.WithTimeout(b.g.ctx, storeTimeout)
	defer cancel()
	if err := b.g.publish(ctx, []bus.Message{{Topic: b.cfg.Resync, Event: "resync", Data: data}}, nil, "notify"); err != nil {
		b.logger.Warn("publishing resync failed", zap.String("topic", b.cfg.Resync), zap.Error(err))
	}
}

func (b *notifyBridge) stats() NotifyStats {
	return NotifyStats{
		Channel:  b.cfg.Channel,
		Mode:     b.mode(),
		State:    string(b.l.State()),
		Leader:   b.leader.Load(),
		Received: b.received.Load(),
		Dropped:  b.dropped.Load(),
	}
}

// notifyStats returns the state of every notify channel, nil without any.
func (g *Gateway) notifyStats() []NotifyStats {
	var out []NotifyStats
	for _, b := range g.notify {
		out = append(out, b.stats())
	}
	return out
}
