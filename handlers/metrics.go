package handlers

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are package-level so their values survive config reloads (a
// gateway outlives the config that built it); Register adds them to each new
// config's registry (docs/design.md, conventions §3, rl #100: metrics registered once go stale).
var (
	metricConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "connections",
		Help: "Open connections: WebSockets and SSE streams.",
	}, []string{"gateway"})
	metricSSEConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "sse_connections",
		Help: "Open SSE streams (counted in connections too).",
	}, []string{"gateway"})
	metricSSERequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "sse_requests_total",
		Help: "SSE stream requests by result (200 or the HTTP status of the refusal).",
	}, []string{"gateway", "code"})
	metricSubscriptions = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "subscriptions",
		Help: "Topic subscriptions held by open connections.",
	}, []string{"gateway"})
	metricUpgrades = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "upgrades_total",
		Help: "Upgrade attempts by result (101 or the HTTP status of the refusal).",
	}, []string{"gateway", "code"})
	metricFramesIn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "frames_in_total",
		Help: "Frames received from clients, by kind (control frame type or app).",
	}, []string{"gateway", "kind"})
	metricBytesIn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "bytes_in_total",
		Help: "Payload bytes received from clients.",
	}, []string{"gateway"})
	metricFramesOut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "frames_out_total",
		Help: "Frames written to clients.",
	}, []string{"gateway"})
	metricBytesOut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "bytes_out_total",
		Help: "Payload bytes written to clients.",
	}, []string{"gateway"})
	metricCompressed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "compressed_bytes_total",
		Help: "Data frames written compressed (permessage-deflate), in bytes: stage raw (before compression) and wire (after).",
	}, []string{"gateway", "stage"})
	metricDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "dropped_total",
		Help: "Frames dropped, by reason: slow_consumer, rate_limited, no_message_hook, hook_queue_full, hook_busy, oversized, cursor, duplicate (an event of a replayed topic a live fill had delivered already).",
	}, []string{"gateway", "reason"})
	metricClosed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "closes_total",
		Help: "Connections closed by the gateway, by close code.",
	}, []string{"gateway", "code"})
	metricPublished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "published_total",
		Help: "Events published, by source (api, hook, bus).",
	}, []string{"gateway", "source"})
	metricDeliveryLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "publish_to_write_seconds",
		Help:    "Time from a publish entering the gateway to its frame being written to a client.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"gateway"})
	metricHookDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "hook_duration_seconds",
		Help:    "Latency of calls to application hooks.",
		Buckets: prometheus.DefBuckets,
	}, []string{"gateway", "hook"})
	metricHookErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "hook_errors_total",
		Help: "Failed hook calls, by hook and cause (timeout, unreachable, status, invalid, busy).",
	}, []string{"gateway", "hook", "cause"})
	metricFills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "live_fills_total",
		Help: "Live gap fills of replayed topics, by cause: gap (a seq skipped), resync (the bus resubscribed or dropped a unit).",
	}, []string{"gateway", "cause"})
	metricFilled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "live_filled_events_total",
		Help: "Events delivered by live gap fills, read from the store or released after the gap closed.",
	}, []string{"gateway"})
	metricTruncated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "truncated_total",
		Help: "Gaps the replay store could not fill, by path: live (subscribers were told truncated), resume, replay.",
	}, []string{"gateway", "path"})
	metricBusHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "bus_healthy",
		Help: "1 while the bus reaches its backend (always, for the memory bus), 0 while it is degraded.",
	}, []string{"gateway", "bus"})
	metricBusUnits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "bus_received_units_total",
		Help: "Units (one publish, or one batch, of another instance) the bus handed to this instance, whether or not it had a subscriber for them.",
	}, []string{"gateway"})
	metricBusMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "bus_received_messages_total",
		Help: "Messages in the units the bus handed to this instance.",
	}, []string{"gateway"})
	metricNotifyReceived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "notify_received_total",
		Help: "Valid notifications received on a PostgreSQL NOTIFY channel.",
	}, []string{"gateway", "channel"})
	metricNotifyDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "realtime", Name: "notify_dropped_total",
		Help: "Notifications dropped, by reason: invalid, system_topic, too_large, shared_store (mode all on a topic replayed in a shared store), publish_failed.",
	}, []string{"gateway", "channel", "reason"})
)

var allMetrics = []prometheus.Collector{
	metricCompressed,
	metricConnections, metricSSEConnections, metricSSERequests, metricSubscriptions, metricUpgrades, metricFramesIn, metricBytesIn,
	metricFramesOut, metricBytesOut, metricDropped, metricClosed, metricPublished,
	metricDeliveryLatency, metricHookDuration, metricHookErrors, metricNotifyReceived, metricNotifyDropped,
	metricFills, metricFilled, metricTruncated, metricBusHealthy, metricBusUnits, metricBusMessages,
}

// RegisterMetrics adds the gateway metrics to reg, tolerating collectors
// already registered (several realtime handlers in one config).
func RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range allMetrics {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// gatewayMetrics caches the label-bound children of one gateway so the hot
// path never looks labels up.
type gatewayMetrics struct {
	connections, subscriptions     prometheus.Gauge
	sseConnections                 prometheus.Gauge
	framesOut, bytesOut, bytesIn   prometheus.Counter
	compressedRaw, compressedWire  prometheus.Counter
	dropSlow, dropRate, dropNoHook prometheus.Counter
	dropHookQueue, dropHookBusy    prometheus.Counter
	dropOversized, dropCursor      prometheus.Counter
	dropDuplicate, filled          prometheus.Counter
	busUnits, busMessages          prometheus.Counter
	latency                        prometheus.Observer
	name                           string
}

func newGatewayMetrics(name string) *gatewayMetrics {
	return &gatewayMetrics{
		name:           name,
		connections:    metricConnections.WithLabelValues(name),
		subscriptions:  metricSubscriptions.WithLabelValues(name),
		sseConnections: metricSSEConnections.WithLabelValues(name),
		framesOut:      metricFramesOut.WithLabelValues(name),
		bytesOut:       metricBytesOut.WithLabelValues(name),
		bytesIn:        metricBytesIn.WithLabelValues(name),
		compressedRaw:  metricCompressed.WithLabelValues(name, "raw"),
		compressedWire: metricCompressed.WithLabelValues(name, "wire"),
		dropSlow:       metricDropped.WithLabelValues(name, "slow_consumer"),
		dropRate:       metricDropped.WithLabelValues(name, "rate_limited"),
		dropNoHook:     metricDropped.WithLabelValues(name, "no_message_hook"),
		dropHookQueue:  metricDropped.WithLabelValues(name, "hook_queue_full"),
		dropHookBusy:   metricDropped.WithLabelValues(name, "hook_busy"),
		dropOversized:  metricDropped.WithLabelValues(name, "oversized"),
		dropCursor:     metricDropped.WithLabelValues(name, "cursor"),
		dropDuplicate:  metricDropped.WithLabelValues(name, "duplicate"),
		filled:         metricFilled.WithLabelValues(name),
		busUnits:       metricBusUnits.WithLabelValues(name),
		busMessages:    metricBusMessages.WithLabelValues(name),
		latency:        metricDeliveryLatency.WithLabelValues(name),
	}
}

func (m *gatewayMetrics) frameIn(kind string, n int) {
	metricFramesIn.WithLabelValues(m.name, kind).Inc()
	m.bytesIn.Add(float64(n))
}

func (m *gatewayMetrics) upgrade(code string) { metricUpgrades.WithLabelValues(m.name, code).Inc() }
func (m *gatewayMetrics) sseRequest(code string) {
	metricSSERequests.WithLabelValues(m.name, code).Inc()
}
func (m *gatewayMetrics) closed(code string) { metricClosed.WithLabelValues(m.name, code).Inc() }
func (m *gatewayMetrics) published(source string, n int) {
	metricPublished.WithLabelValues(m.name, source).Add(float64(n))
}
