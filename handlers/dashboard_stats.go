package handlers

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
)

// The dashboard's sampler: what a snapshot holds, how it is taken, and
// when. A sample walks the topic index once (O(topics), nothing per
// connection), reads the gateway's own Prometheus children, and asks the
// backends only about the busiest topics (at most 2×dashTopN of them).
const (
	// dashInterval is how often the sampler runs while someone watches.
	dashInterval = 2 * time.Second
	// dashTTL is how long a snapshot or a watch mark lives in the cluster
	// store without being renewed.
	dashTTL = 10 * time.Second
	// dashTopN bounds the busiest-topic lists.
	dashTopN = 10
	// dashBusChanges is how many bus state changes a gateway remembers for
	// the timeline.
	dashBusChanges = 64
	// dashMaxViewers bounds the open event streams of one gateway.
	dashMaxViewers = 32
)

// DashboardSnapshot is one instance's state, as the dashboard shows it.
// Counters are totals since the gateway started (*_total); the page turns
// successive snapshots into rates.
type DashboardSnapshot struct {
	Instance      string  `json:"instance"`
	Gateway       string  `json:"gateway"`
	At            int64   `json:"at"` // Unix milliseconds
	UptimeSeconds float64 `json:"uptime_seconds"`
	Draining      bool    `json:"draining"`

	Connections   int    `json:"connections"`
	Subscriptions int    `json:"subscriptions"`
	Topics        int    `json:"topics"` // topics with a subscriber
	Connects      uint64 `json:"connects_total"`
	Disconnects   uint64 `json:"disconnects_total"`

	Published   map[string]uint64   `json:"published_total"` // by source
	Dropped     map[string]uint64   `json:"dropped_total"`   // by reason
	Closes      map[string]uint64   `json:"closes_total"`    // by close code
	SlowCloses  uint64              `json:"slow_consumer_closes_total"`
	Hooks       map[string]HookStat `json:"hooks"` // by hook
	Bus         BusStat             `json:"bus"`
	Unreachable []string            `json:"unreachable"`

	TopBySubscribers []TopicStat `json:"top_by_subscribers"`
	TopByPublishes   []TopicStat `json:"top_by_publishes"`
	Replay           []RuleStat  `json:"replay"`
	Presence         []RuleStat  `json:"presence"`
}

// HookStat is one hook's calls: their count and summed latency, and the
// failures by cause.
type HookStat struct {
	Calls   uint64            `json:"calls_total"`
	Seconds float64           `json:"seconds_total"`
	Errors  map[string]uint64 `json:"errors_total"`
}

// BusStat is the bus's state and its recent changes, oldest first.
type BusStat struct {
	Backend string      `json:"backend"`
	Healthy bool        `json:"healthy"`
	Changes []BusChange `json:"changes"`
	Invalid uint64      `json:"invalid_envelopes_total"`
	Dropped uint64      `json:"dropped_total"`
}

// BusChange is the bus becoming healthy or degraded at At (Unix ms).
type BusChange struct {
	At      int64 `json:"at"`
	Healthy bool  `json:"healthy"`
}

// RuleStat describes a replay or presence rule.
type RuleStat struct {
	Pattern    string  `json:"pattern"`
	Store      string  `json:"store,omitempty"`
	Size       int     `json:"size,omitempty"`
	TTLSeconds float64 `json:"ttl_seconds,omitempty"`
}

// DashboardView is what the dashboard receives: this instance's snapshot
// and, with a cluster store, every live instance's (this one included).
type DashboardView struct {
	Self         *DashboardSnapshot `json:"self"`
	Cluster      []json.RawMessage  `json:"cluster"`
	ClusterError string             `json:"cluster_error,omitempty"`
}

// dashState is a gateway's dashboard state: the bus changes (recorded
// always, they are rare), the last sample, and the open event streams.
type dashState struct {
	mu      sync.Mutex
	changes []BusChange
	last    *DashboardSnapshot
	lastAt  time.Time
	viewers map[chan []byte]struct{}

	sampleMu sync.Mutex // one sample at a time: topStats resets each topic's count
}

func (d *dashState) busChanged(healthy bool, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.changes) == dashBusChanges {
		d.changes = append(d.changes[:0], d.changes[1:]...)
	}
	d.changes = append(d.changes, BusChange{At: at.UnixMilli(), Healthy: healthy})
}

// watch registers an event stream; it returns false when dashMaxViewers
// are open. The channel holds the newest view only.
func (d *dashState) watch(ch chan []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.viewers) >= dashMaxViewers {
		return false
	}
	if d.viewers == nil {
		d.viewers = make(map[chan []byte]struct{})
	}
	d.viewers[ch] = struct{}{}
	return true
}

func (d *dashState) unwatch(ch chan []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.viewers, ch)
}

func (d *dashState) watching() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.viewers) > 0
}

// broadcast hands view to every stream, replacing a view it has not sent
// yet: a slow viewer skips samples, it never holds the sampler.
func (d *dashState) broadcast(view []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ch := range d.viewers {
		select {
		case <-ch:
		default:
		}
		select {
		case ch <- view:
		default:
		}
	}
}

// dashboardLoop samples every dashInterval while a dashboard of this
// instance is open, or, with a cluster store, while one of any instance
// is (the store's watch mark); otherwise a round costs an atomic load, or
// one EXISTS with a store. It is a goroutine of g.wg.
func (g *Gateway) dashboardLoop() {
	defer g.wg.Done()
	tick := time.NewTicker(dashInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-tick.C:
		}
		g.safely("dashboard sampler", g.dashboardRound)
	}
}

func (g *Gateway) dashboardRound() {
	if g.settings().DashboardPath == "" {
		return
	}
	local := g.dash.watching()
	if !local {
		if g.snapshots == nil {
			return
		}
		ctx, cancel := context.WithTimeout(g.ctx, time.Second)
		watched, err := g.snapshots.Watched(ctx)
		cancel()
		if err != nil || !watched {
			return
		}
	}
	ctx, cancel := context.WithTimeout(g.ctx, dashInterval)
	defer cancel()
	view := g.dashboardView(ctx, 0, local)
	if local {
		if b, err := json.Marshal(view); err == nil {
			g.dash.broadcast(b)
		}
	}
}

// dashboardView samples (or reuses a sample younger than maxAge), shares
// the sample through the cluster store, and, when read is set, marks the
// cluster watched and reads every instance's snapshot.
func (g *Gateway) dashboardView(ctx context.Context, maxAge time.Duration, read bool) DashboardView {
	snap := g.dashboardSample(ctx, maxAge)
	view := DashboardView{Self: snap}
	if g.snapshots == nil {
		return view
	}
	b, err := json.Marshal(snap)
	if err == nil {
		err = g.snapshots.Put(ctx, g.instanceID, b, dashTTL)
	}
	if err == nil && read {
		if err = g.snapshots.Watch(ctx, dashTTL); err == nil {
			var all [][]byte
			all, err = g.snapshots.All(ctx)
			for _, s := range all {
				if json.Valid(s) {
					view.Cluster = append(view.Cluster, s)
				}
			}
		}
	}
	if err != nil {
		view.ClusterError = "the cluster view is unavailable: " + err.Error()
		g.logger.Debug("dashboard: sharing snapshots failed", zap.Error(err))
	}
	return view
}

// dashboardSample returns a snapshot taken now, or the last one if it is
// younger than maxAge.
func (g *Gateway) dashboardSample(ctx context.Context, maxAge time.Duration) *DashboardSnapshot {
	g.dash.sampleMu.Lock()
	defer g.dash.sampleMu.Unlock()
	now := time.Now()
	g.dash.mu.Lock()
	last, lastAt := g.dash.last, g.dash.lastAt
	changes := append([]BusChange(nil), g.dash.changes...)
	g.dash.mu.Unlock()
	if last != nil && now.Sub(lastAt) < maxAge {
		return last
	}
	elapsed := dashInterval
	if last != nil {
		elapsed = now.Sub(lastAt)
	}
	snap := g.takeSnapshot(ctx, now, elapsed, changes)
	g.dash.mu.Lock()
	g.dash.last, g.dash.lastAt = snap, now
	g.dash.mu.Unlock()
	return snap
}

func (g *Gateway) takeSnapshot(ctx context.Context, now time.Time, elapsed time.Duration, changes []BusChange) *DashboardSnapshot {
	name := g.m.name
	conns := g.conns.count()
	connects := uint64(metricValue(metricUpgrades.WithLabelValues(name, "101")))
	snap := &DashboardSnapshot{
		Instance:      g.instanceID,
		Gateway:       name,
		At:            now.UnixMilli(),
		UptimeSeconds: g.now().Sub(g.started).Seconds(),
		Draining:      g.draining.Load(),
		Connections:   conns,
		Subscriptions: int(metricValue(g.m.subscriptions)),
		Connects:      connects,
		Published:     g.counters(metricPublished, "source"),
		Dropped:       g.counters(metricDropped, "reason"),
		Closes:        g.counters(metricClosed, "code"),
		Hooks:         g.hookStats(),
		Bus:           BusStat{Backend: g.busName, Healthy: g.healthy.Load(), Changes: changes},
		Unreachable:   g.ext.unreachable(),
	}
	// Connections of a gateway this one replaced on a reload count in
	// upgrades_total and are closed: each connect is one disconnect or
	// one open connection.
	if connects > uint64(conns) {
		snap.Disconnects = connects - uint64(conns)
	}
	// 1013 is the slow-consumer close (conn.go).
	snap.SlowCloses = snap.Closes["1013"]
	if c, ok := g.bus.(bus.InvalidCounter); ok {
		snap.Bus.Invalid = uint64(c.Invalid())
	}
	if c, ok := g.bus.(bus.DropCounter); ok {
		snap.Bus.Dropped = uint64(c.Dropped())
	}
	snap.TopBySubscribers, snap.TopByPublishes, snap.Topics = g.hub.topStats(dashTopN, elapsed)
	g.fillTopics(ctx, snap.TopBySubscribers, snap.TopByPublishes)
	for _, r := range g.ext.replay {
		store := string(r.cfg.Store)
		if store == "" {
			store = string(ReplayStoreMemory)
		}
		snap.Replay = append(snap.Replay, RuleStat{Pattern: string(r.pattern), Store: store, Size: r.cfg.Size, TTLSeconds: r.cfg.TTL.Seconds()})
	}
	for _, r := range g.ext.presence {
		snap.Presence = append(snap.Presence, RuleStat{Pattern: string(r.pattern)})
	}
	return snap
}

// fillTopics asks the backends for the replay head and presence count of
// each listed topic, once per topic, outside every lock; a backend that
// does not answer within ctx leaves the hub's values.
func (g *Gateway) fillTopics(ctx context.Context, lists ...[]TopicStat) {
	type info struct {
		head     uint64
		presence int
	}
	seen := make(map[string]info)
	for _, list := range lists {
		for i := range list {
			st := &list[i]
			in, ok := seen[st.Topic]
			if !ok {
				in = info{head: st.Head, presence: -1}
				if r := g.replayFor(st.Topic); r != nil {
					if h, err := r.store.Head(ctx, st.Topic); err == nil {
						in.head = h
					}
				}
				if r := g.presenceFor(st.Topic); r != nil {
					if n, err := r.tracker.Count(ctx, st.Topic); err == nil {
						in.presence = n
					}
				}
				seen[st.Topic] = in
			}
			st.Head, st.Presence = in.head, in.presence
		}
	}
}

// metricValue reads a counter or gauge child.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if m.Write(&d) != nil {
		return 0
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	return 0
}

// collect calls fn with each child of c that belongs to gateway. A vector
// has a child per label set ever used, a handful per gateway.
func (g *Gateway) collect(c prometheus.Collector, fn func(labels map[string]string, d *dto.Metric)) {
	gateway := g.m.name
	ch := make(chan prometheus.Metric, 16)
	go func() {
		defer close(ch)
		defer func() {
			if p := recover(); p != nil {
				g.logPanic("dashboard metric collection", p)
			}
		}()
		c.Collect(ch)
	}()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		labels := make(map[string]string, len(d.Label))
		for _, l := range d.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["gateway"] == gateway {
			fn(labels, &d)
		}
	}
}

// counters returns the gateway's counters of vec by label.
func (g *Gateway) counters(vec *prometheus.CounterVec, label string) map[string]uint64 {
	out := make(map[string]uint64)
	g.collect(vec, func(l map[string]string, d *dto.Metric) {
		if d.Counter != nil {
			out[l[label]] += uint64(d.Counter.GetValue())
		}
	})
	return out
}

// hookStats returns the gateway's hook calls, latency and errors by hook.
func (g *Gateway) hookStats() map[string]HookStat {
	out := make(map[string]HookStat)
	g.collect(metricHookDuration, func(l map[string]string, d *dto.Metric) {
		if h := d.Histogram; h != nil {
			st := out[l["hook"]]
			st.Calls, st.Seconds = h.GetSampleCount(), h.GetSampleSum()
			out[l["hook"]] = st
		}
	})
	g.collect(metricHookErrors, func(l map[string]string, d *dto.Metric) {
		if d.Counter == nil {
			return
		}
		st := out[l["hook"]]
		if st.Errors == nil {
			st.Errors = make(map[string]uint64)
		}
		st.Errors[l["cause"]] += uint64(d.Counter.GetValue())
		out[l["hook"]] = st
	})
	return out
}
