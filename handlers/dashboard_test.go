package handlers

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/extensions/bus"
)

// topStats ranks topics by subscribers and by publishes since its previous
// call, at most n each, and counts the topics with a subscriber; each call
// starts the publish counts afresh.
func TestHubTopStatsRanksAndResets(t *testing.T) {
	g := memGateway(t)
	for i := range 5 {
		topic := fmt.Sprintf("t%d", i)
		for range i {
			g.hub.subscribe(topic, newMemConn(g, false), nil)
		}
		for range 10 - i {
			if _, err := g.hub.publish([]bus.Message{{Topic: topic, Event: "e"}}, true, nil, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	bySubs, byPubs, subscribed := g.hub.topStats(3, 2*time.Second)
	if subscribed != 4 {
		t.Errorf("subscribed topics = %d, want 4 (t0 has none)", subscribed)
	}
	names := func(l []TopicStat) (out []string) {
		for _, s := range l {
			out = append(out, fmt.Sprintf("%s:%d/%d", s.Topic, s.Subscribers, s.Publishes))
		}
		return out
	}
	if got, want := fmt.Sprint(names(bySubs)), "[t4:4/6 t3:3/7 t2:2/8]"; got != want {
		t.Errorf("by subscribers %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(names(byPubs)), "[t0:0/10 t1:1/9 t2:2/8]"; got != want {
		t.Errorf("by publishes %s, want %s", got, want)
	}
	if byPubs[0].PerSecond != 5 || byPubs[0].Head != 10 {
		t.Errorf("t0: %v/s, head %d; want 5/s over 2 s, head 10", byPubs[0].PerSecond, byPubs[0].Head)
	}
	if _, err := g.hub.publish([]bus.Message{{Topic: "t4", Event: "e"}}, true, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	_, byPubs, _ = g.hub.topStats(3, time.Second)
	if got, want := fmt.Sprint(names(byPubs)), "[t4:4/1]"; got != want {
		t.Errorf("by publishes after one more publish %s, want %s", got, want)
	}
}
