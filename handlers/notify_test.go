package handlers

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

var notifySerial atomic.Int64

// A gateway with notify channels starts their listeners and stops them in
// Close (the package's leak check would catch one left running); in mode
// leader a lone gateway leads, and a notification reaches a subscriber.
func TestGatewayNotifyLifecycle(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	all := fmt.Sprintf("rt_gw_%d_%d", os.Getpid(), notifySerial.Add(1))
	leader := fmt.Sprintf("rt_gw_%d_%d", os.Getpid(), notifySerial.Add(1))
	cfg := testConfig()
	cfg.Notify = []NotifyConfig{
		{Channel: all, ConnString: testsvc.PostgresURL()},
		{Channel: leader, ConnString: testsvc.PostgresURL(), Mode: NotifyLeader, PollInterval: 50 * time.Millisecond, Resync: "sync"},
	}
	g, srv := newTestGateway(t, cfg)
	testsvc.WaitFor(t, 10*time.Second, "both listeners, one the leader", func() bool {
		s := g.Stats().Notify
		return len(s) == 2 && s[0].State == "listening" && s[1].State == "listening" && s[1].Leader
	})
	c := dialClient(t, srv)
	c.subscribe("news")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, ch := range []string{all, leader} {
		if _, err := pool.Exec(ctx, `SELECT pg_notify($1, $2)`, ch, `{"topic":"news","event":"e","data":"`+ch+`"}`); err != nil {
			t.Fatal(err)
		}
		f := c.read(ctx)
		if len(f) != 1 || f[0].Event != "e" || string(f[0].Data) != `"`+ch+`"` {
			t.Fatalf("got %+v, want the notification of %s", f, ch)
		}
	}
	if s := g.Stats().Notify; s[0].Mode != "all" || s[1].Mode != "leader" || s[0].Received != 1 || s[1].Received != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A bad channel fails New with the channel named and starts nothing.
func TestGatewayNotifyBadChannelFailsNew(t *testing.T) {
	cfg := testConfig()
	cfg.Notify = []NotifyConfig{{Channel: "ok_one", ConnString: testsvc.PostgresURL()}, {Channel: "bad-channel", ConnString: testsvc.PostgresURL()}}
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), `notify "bad-channel"`) {
		t.Fatalf("New: %v, want an error naming the channel", err)
	}
}
