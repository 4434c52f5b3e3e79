package caddytest

import (
	"fmt"
	"testing"
	"time"
)

// caddy_realtime_bus_received_units_total counts the units the bus hands
// an instance: on the routed bus, those of the topics it serves only, so
// an instance without subscribers counts none of a cluster's publishes.
func TestClusterBusReceivedUnitsMetric(t *testing.T) {
	cl := startCluster(t, 3, clusterSite)
	sub := subscribedLegacy(t, cl.nodes[1], "news")
	const units, messages = "caddy_realtime_bus_received_units_total", "caddy_realtime_bus_received_messages_total"
	before := [3]float64{}
	for i, n := range cl.nodes {
		before[i] = metric(t, n, units)
	}
	for i := 1; i <= 5; i++ {
		publish(t, cl.nodes[0], fmt.Sprintf(`{"topic":"news","event":"e","data":%d,"seq":false}`, i))
		publish(t, cl.nodes[0], fmt.Sprintf(`{"topic":"other","event":"e","data":%d,"seq":false}`, i))
	}
	publish(t, cl.nodes[0], `[{"topic":"news","event":"e","data":6,"seq":false},{"topic":"news","event":"e","data":7,"seq":false}]`)
	for i := 1; i <= 7; i++ {
		sub.expect(fmt.Sprintf(`{"topic":"news","event":"e","data":%d}`, i))
	}
	waitFor(t, 5*time.Second, "the serving instance's count", func() bool { return metric(t, cl.nodes[1], units)-before[1] == 6 })
	if got := metric(t, cl.nodes[1], messages); got < 7 {
		t.Fatalf("%s = %v on the serving instance, want at least the 7 messages", messages, got)
	}
	if got := metric(t, cl.nodes[2], units) - before[2]; got != 0 {
		t.Fatalf("%s grew by %v on an instance that serves no topic, want 0", units, got)
	}
	if got := metric(t, cl.nodes[0], units) - before[0]; got != 0 {
		t.Fatalf("%s grew by %v on the publishing instance, want 0", units, got)
	}
}
