package lazyredis

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "internal/lazyredis.") }

// option is what the gateway passes, on addr.
func option(addr string) rueidis.ClientOption {
	return rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true, DisableRetry: true}
}

func ping(c rueidis.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Ping().Build()).Error()
}

// errs collects OnError's errors.
type errs struct {
	mu  sync.Mutex
	all []error
}

func (e *errs) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, err)
}

func (e *errs) list() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.all...)
}

func TestClientConnectsAtOnceWhenRedisIsUp(t *testing.T) {
	srv := testsvc.StartRedis(t)
	var connects atomic.Int32
	c := New(Config{Option: option(srv.Addr()), OnConnect: func() { connects.Add(1) }})
	defer c.Close()
	if !c.Connected() {
		t.Fatal("not connected although Redis is up")
	}
	if err := ping(c); err != nil {
		t.Fatalf("PING: %v", err)
	}
	if c.Mode() != rueidis.ClientModeStandalone {
		t.Fatalf("mode %s", c.Mode())
	}
	if n := connects.Load(); n != 0 {
		t.Fatalf("OnConnect called %d times for New's own attempt, want 0", n)
	}
}

func TestClientServesErrorsUntilRedisAppearsThenDelegates(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill() // the port is known and nothing listens on it
	var (
		connects atomic.Int32
		failures errs
	)
	c := New(Config{Option: option(srv.Addr()), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		OnError: failures.add, OnConnect: func() { connects.Add(1) }})
	defer c.Close()
	if c.Connected() {
		t.Fatal("connected to nothing")
	}
	if len(failures.list()) == 0 {
		t.Fatal("New's failed attempt was not reported to OnError")
	}
	if err := ping(c); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("PING before Redis = %v, want ErrNotConnected", err)
	}
	if err := ping(c); err.Error() != "redis: not connected yet (retrying)" {
		t.Fatalf("error text %q", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for i, r := range c.DoMulti(ctx, c.B().Ping().Build(), c.B().Get().Key("k").Build()) {
		if !errors.Is(r.Error(), ErrNotConnected) {
			t.Fatalf("DoMulti result %d = %v", i, r.Error())
		}
	}
	if err := c.Receive(ctx, c.B().Subscribe().Channel("ch").Build(), func(rueidis.PubSubMessage) {}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Receive before Redis = %v", err)
	}
	if err := c.Dedicated(func(rueidis.DedicatedClient) error { return nil }); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Dedicated before Redis = %v", err)
	}
	dc, release := c.Dedicate()
	if err := dc.Do(ctx, dc.B().Ping().Build()).Error(); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Dedicate's client before Redis = %v", err)
	}
	if err := <-dc.SetPubSubHooks(rueidis.PubSubHooks{}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("SetPubSubHooks before Redis = %v", err)
	}
	release()
	nodes := c.Nodes()
	if len(nodes) != 1 || nodes[srv.Addr()] == nil {
		t.Fatalf("Nodes before Redis = %v, want the client under %s", nodes, srv.Addr())
	}
	// A multi-key command across slots builds fine before the mode is known.
	early := c.B().Exists().Key("a", "b", "c").Build()

	srv.Restart()
	testsvc.WaitFor(t, 5*time.Second, "the background connection", c.Connected)
	if err := c.Do(ctx, early).Error(); err != nil {
		t.Fatalf("a command built before the connection, sent after: %v", err)
	}
	if err := ping(c); err != nil {
		t.Fatalf("PING after Redis appeared: %v", err)
	}
	if n := connects.Load(); n != 1 {
		t.Fatalf("OnConnect called %d times, want 1", n)
	}
	// Pub/sub works through the delegate.
	got := make(chan string, 1)
	rctx, rcancel := context.WithCancel(context.Background())
	recvDone := make(chan error, 1)
	go func() {
		recvDone <- c.Receive(rctx, c.B().Subscribe().Channel("ch").Build(), func(m rueidis.PubSubMessage) {
			select {
			case got <- m.Message:
			default:
			}
		})
	}()
	testsvc.WaitFor(t, 5*time.Second, "a message through Receive", func() bool {
		_ = c.Do(ctx, c.B().Publish().Channel("ch").Message("hi").Build()).Error()
		select {
		case m := <-got:
			return m == "hi"
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})
	rcancel()
	<-recvDone
}

func TestClientCloseStopsRetrying(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill()
	var failures errs
	c := New(Config{Option: option(srv.Addr()), MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, OnError: failures.add})
	testsvc.WaitFor(t, 5*time.Second, "a few background attempts", func() bool { return len(failures.list()) >= 3 })
	c.Close()
	c.Close() // harmless
	if err := ping(c); !errors.Is(err, rueidis.ErrClosing) {
		t.Fatalf("PING after Close = %v, want ErrClosing", err)
	}
	select {
	case <-c.done:
	default:
		t.Fatal("the retry goroutine is still running after Close")
	}
	n := len(failures.list())
	if ping(c); len(failures.list()) != n {
		t.Fatal("an attempt was reported after Close")
	}
}

func TestClientCloseClosesTheRealClient(t *testing.T) {
	srv := testsvc.StartRedis(t)
	srv.Kill()
	c := New(Config{Option: option(srv.Addr()), MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	srv.Restart()
	testsvc.WaitFor(t, 5*time.Second, "the background connection", c.Connected)
	c.Close()
	if err := ping(c); !errors.Is(err, rueidis.ErrClosing) {
		t.Fatalf("PING after Close = %v, want ErrClosing", err)
	}
}

// A wrong password is retried like an unreachable server (it may be fixed
// on the server side), and no reported error carries it.
func TestClientRetriesAuthFailuresWithoutLeakingThePassword(t *testing.T) {
	srv := testsvc.StartRedis(t)
	admin := testsvc.Connect(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const secret = "s3cret-pass-word"
	if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("requirepass", "other").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	opt := option(srv.Addr())
	opt.Password = secret
	var failures errs
	c := New(Config{Option: opt, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, OnError: failures.add})
	defer c.Close()
	if c.Connected() {
		t.Fatal("connected with a wrong password")
	}
	testsvc.WaitFor(t, 5*time.Second, "a retried attempt", func() bool { return len(failures.list()) >= 2 })
	// The admin connection is authenticated already; fix the server.
	if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("requirepass", secret).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	testsvc.WaitFor(t, 5*time.Second, "the connection once the password matches", c.Connected)
	if err := ping(c); err != nil {
		t.Fatalf("PING: %v", err)
	}
	for _, err := range failures.list() {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("an error carries the password: %v", err)
		}
	}
}
