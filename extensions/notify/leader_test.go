package notify

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// member is one of several Listeners electing a leader on one channel.
type member struct {
	l       *Listener
	appName string
	got     chan Notification
	leader  atomic.Bool
	wins    atomic.Int32
}

// startMembers starts n Listeners on one channel of the test's own, in
// leader mode with a short poll; they are closed in t.Cleanup.
func startMembers(t *testing.T, n int) (*pgxpool.Pool, string, []*member) {
	t.Helper()
	pool, _ := testsvc.Postgres(t)
	channel := fmt.Sprintf("rt_leader_%d_%d", os.Getpid(), serial.Add(1))
	sep := "?"
	if strings.Contains(testsvc.PostgresURL(), "?") {
		sep = "&"
	}
	var ms []*member
	for i := range n {
		m := &member{appName: fmt.Sprintf("rt-%s-%d", channel, i), got: make(chan Notification, 100)}
		l, err := NewListener(Config{
			ConnString:     testsvc.PostgresURL() + sep + "application_name=" + m.appName,
			Channel:        channel,
			Handler:        func(n Notification) { m.got <- n },
			OnError:        func(err error) { t.Logf("member %d: %v", i, err) },
			ReconnectDelay: 50 * time.Millisecond,
			LeaderLock:     LockID(channel),
			LeaderPoll:     50 * time.Millisecond,
			OnLeader: func(leader bool) {
				m.leader.Store(leader)
				if leader {
					m.wins.Add(1)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		m.l = l
		l.Start()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := l.Close(ctx); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		ms = append(ms, m)
	}
	return pool, channel, ms
}

// awaitOneLeader waits until exactly one live member leads and the
// server shows exactly one LISTEN on the channel, and returns it.
func awaitOneLeader(t *testing.T, pool *pgxpool.Pool, channel string, ms []*member) *member {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var leaders []*member
		for _, m := range ms {
			if m.leader.Load() && m.l.State() == StateListening {
				leaders = append(leaders, m)
			}
		}
		var listening int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 AND query LIKE 'LISTEN%'`, "rt-"+channel+"-%").Scan(&listening)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaders) == 1 && listening == 1 {
			return leaders[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no single leader within 10s")
	return nil
}

// sendAndCount sends n notifications and checks that want, and no other
// member, receives each exactly once.
func sendAndCount(t *testing.T, pool *pgxpool.Pool, channel string, ms []*member, want *member, n int) {
	t.Helper()
	for i := range n {
		payload := fmt.Sprintf(`{"topic":"t","event":"e","data":%d}`, i)
		if _, err := pool.Exec(context.Background(), `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case got := <-want.got:
			if string(got.Data) != fmt.Sprint(i) {
				t.Fatalf("leader got data %s, want %d", got.Data, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the leader got %d of %d notifications", i, n)
		}
	}
	// A notification goes to every LISTENing session at commit: had a
	// follower LISTENed, it would have it by now.
	if _, err := pool.Exec(context.Background(), `SELECT pg_notify($1, '{"topic":"t","event":"fence"}')`, channel); err != nil {
		t.Fatal(err)
	}
	if got := <-want.got; got.Event != "fence" {
		t.Fatalf("leader got %+v, want the fence", got)
	}
	for i, m := range ms {
		if m != want && len(m.got) > 0 {
			t.Fatalf("follower %d received %d notifications", i, len(m.got))
		}
	}
}

func TestLeaderOnlyOneOfThreeReceives(t *testing.T) {
	pool, channel, ms := startMembers(t, 3)
	leader := awaitOneLeader(t, pool, channel, ms)
	for _, m := range ms {
		if m != leader {
			waitCond(t, "a follower to stand by", func() bool { return m.l.State() == StateStandby })
		}
	}
	sendAndCount(t, pool, channel, ms, leader, 20)
}

func TestLeaderTakeoverAfterClose(t *testing.T) {
	pool, channel, ms := startMembers(t, 3)
	first := awaitOneLeader(t, pool, channel, ms)
	start := time.Now()
	if err := first.l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if first.leader.Load() {
		t.Fatal("OnLeader(false) was not called on Close")
	}
	var rest []*member
	for _, m := range ms {
		if m != first {
			rest = append(rest, m)
		}
	}
	second := awaitOneLeader(t, pool, channel, rest)
	// Within a few polls of 50ms (plus the test's own polling).
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("takeover took %s", d)
	}
	sendAndCount(t, pool, channel, rest, second, 5)
}

func TestLeaderTakeoverAfterBackendTerminated(t *testing.T) {
	pool, channel, ms := startMembers(t, 3)
	first := awaitOneLeader(t, pool, channel, ms)
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, first.appName).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("terminated %d backends, want 1", n)
	}
	waitCond(t, "the terminated leader to step down", func() bool { return !first.leader.Load() })
	// Any member may win again, the terminated one included once it has
	// reconnected; exactly one does, and it alone receives.
	next := awaitOneLeader(t, pool, channel, ms)
	sendAndCount(t, pool, channel, ms, next, 5)
	var wins int32
	for _, m := range ms {
		wins += m.wins.Load()
	}
	if wins != 2 {
		t.Fatalf("%d leaderships in all, want 2", wins)
	}
}

// The id is pinned: instances of different versions in one cluster (a
// rolling upgrade) must contend for the same lock.
func TestLockIDIsStablePerChannel(t *testing.T) {
	if got, want := LockID("todos"), int64(4419721414628850630); got != want {
		t.Fatalf("LockID(todos) = %d, want %d: changing it splits a cluster into two leaders", got, want)
	}
	if LockID("todos") == LockID("orders") {
		t.Fatal("two channels share a lock id")
	}
	if LockID("todos") == 0 {
		t.Fatal("LockID returned 0")
	}
}

// waitCond polls cond every 10 ms for up to 10 s.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The pool's DSN may serve the LISTEN connection: pgxpool's parameters are
// not sent to the server, which would refuse them.
func TestPoolParametersAreNotSentToTheServer(t *testing.T) {
	l, err := NewListener(Config{ConnString: "postgres://u@h/db?pool_max_conns=4&pool_min_conns=1", Channel: "c", Handler: func(Notification) {}})
	if err != nil {
		t.Fatal(err)
	}
	for k := range l.connCfg.RuntimeParams {
		if strings.HasPrefix(k, "pool_") {
			t.Errorf("runtime parameter %s kept", k)
		}
	}
	if got := l.connCfg.RuntimeParams["application_name"]; got != DefaultApplicationName {
		t.Errorf("application_name = %q, want %q", got, DefaultApplicationName)
	}
}
