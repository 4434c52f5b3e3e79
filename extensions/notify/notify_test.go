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

// TestMain fails the run when a goroutine of this package outlives the
// tests: every Listener must stop what it started when closed.
func TestMain(m *testing.M) { testsvc.RunWithLeakCheck(m, "extensions/notify.") }

var serial atomic.Int64

type fixture struct {
	pool      *pgxpool.Pool
	channel   string
	appName   string
	l         *Listener
	got       chan Notification
	reconnect chan struct{}
}

// start returns a started Listener on a channel of the test's own, with
// cfg's field names, closed in t.Cleanup, once its LISTEN is in place.
func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	pool, _ := testsvc.Postgres(t)
	f := &fixture{
		pool:      pool,
		channel:   fmt.Sprintf("rt_notify_%d_%d", os.Getpid(), serial.Add(1)),
		got:       make(chan Notification, 100),
		reconnect: make(chan struct{}, 10),
	}
	f.appName = "rt-" + f.channel
	sep := "?"
	if strings.Contains(testsvc.PostgresURL(), "?") {
		sep = "&"
	}
	cfg.ConnString = testsvc.PostgresURL() + sep + "application_name=" + f.appName
	cfg.Channel = f.channel
	cfg.Handler = func(n Notification) { f.got <- n }
	cfg.OnReconnect = func() { f.reconnect <- struct{}{} }
	cfg.OnError = func(err error) { t.Logf("OnError: %v", err) }
	if cfg.ReconnectDelay == 0 {
		cfg.ReconnectDelay = 50 * time.Millisecond
	}
	l, err := NewListener(cfg)
	if err != nil {
		t.Fatalf("NewListener: %v", err)
	}
	f.l = l
	l.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	f.waitListening(t)
	return f
}

// waitListening waits until the listener's session is LISTENing.
func (f *fixture) waitListening(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := f.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'`, f.appName).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the listener never LISTENed")
}

func (f *fixture) notify(t *testing.T, payload string) {
	t.Helper()
	if _, err := f.pool.Exec(context.Background(), `SELECT pg_notify($1, $2)`, f.channel, payload); err != nil {
		t.Fatalf("pg_notify: %v", err)
	}
}

func (f *fixture) receive(t *testing.T) Notification {
	t.Helper()
	select {
	case n := <-f.got:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return Notification{}
	}
}

func expect(t *testing.T, got Notification, topic, event, data string) {
	t.Helper()
	if got.Topic != topic || got.Event != event || string(got.Data) != data {
		t.Fatalf("got (%q, %q, %s), want (%q, %q, %s)", got.Topic, got.Event, got.Data, topic, event, data)
	}
}

func TestNotifyReachesHandler(t *testing.T) {
	f := start(t, Config{})
	f.notify(t, `{"topic":"chat:1","event":"msg","data":{"b":1,"a":[1, 2]}}`)
	expect(t, f.receive(t), "chat:1", "msg", `{"b":1,"a":[1, 2]}`)
	f.notify(t, `{"topic":"chat:2","event":"ping"}`)
	expect(t, f.receive(t), "chat:2", "ping", `null`)
}

func TestFieldMapping(t *testing.T) {
	f := start(t, Config{TopicField: "table", EventField: "op", DataField: "row"})
	f.notify(t, `{"table":"orders","op":"INSERT","row":{"id":7},"topic":"ignored"}`)
	expect(t, f.receive(t), "orders", "INSERT", `{"id":7}`)
}

func TestInvalidPayloadsAreDroppedAndCounted(t *testing.T) {
	f := start(t, Config{})
	invalid := []string{
		``,
		`not json`,
		`[1,2]`,
		`"string"`,
		`null`,
		`{"event":"e"}`,
		`{"topic":"t"}`,
		`{"topic":1,"event":"e"}`,
		`{"topic":"__realtime","event":"e"}`,
		`{"topic":"__presence:x","event":"e"}`,
		`{"topic":"has\"quote","event":"e"}`,
		`{"topic":"t","event":""}`,
		`{"topic":"t","event":"a\u0001b"}`,
		`{"topic":"t","event":"e","data":}`,
		`{"topic":"t","event":"e","data":{"x":` + strings.Repeat(" ", 7990) + `1}}`, // 8000+ bytes
		`{"topic":"` + strings.Repeat("x", 300) + `","event":"e"}`,
	}
	for _, p := range invalid {
		if len(p) >= 8000 {
			// PostgreSQL refuses it; the size cap is checked directly.
			if _, reason := f.l.parse(p); reason != ReasonTooLarge {
				t.Errorf("parse gave %q for a payload of %d bytes, want %q", reason, len(p), ReasonTooLarge)
			}
			continue
		}
		f.notify(t, p)
	}
	f.notify(t, `{"topic":"ok","event":"e","data":1}`)
	expect(t, f.receive(t), "ok", "e", `1`)
	if got, want := f.l.Invalid(), uint64(len(invalid)-1); got != want {
		t.Fatalf("Invalid() = %d, want %d", got, want)
	}
	select {
	case n := <-f.got:
		t.Fatalf("an invalid payload was delivered: %+v", n)
	default:
	}
	// A SQL_ASCII database can send bytes that are not UTF-8 (this test
	// database is UTF8 and refuses them, so parse is asked directly).
	if _, reason := f.l.parse("{\"topic\":\"t\",\"event\":\"e\",\"data\":\"\xff\"}"); reason != ReasonInvalid {
		t.Errorf("parse gave %q for a payload that is not UTF-8, want %q", reason, ReasonInvalid)
	}
}

func TestReconnectAfterBackendTerminated(t *testing.T) {
	f := start(t, Config{})
	f.notify(t, `{"topic":"before","event":"e"}`)
	expect(t, f.receive(t), "before", "e", `null`)
	var n int
	if err := f.pool.QueryRow(context.Background(),
		`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, f.appName).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("terminated %d backends, want 1", n)
	}
	select {
	case <-f.reconnect:
	case <-time.After(10 * time.Second):
		t.Fatal("OnReconnect not called within 10s")
	}
	f.waitListening(t)
	f.notify(t, `{"topic":"after","event":"e","data":[]}`)
	expect(t, f.receive(t), "after", "e", `[]`)
}

func TestNewListenerRefusesBadConfig(t *testing.T) {
	h := func(Notification) {}
	for name, cfg := range map[string]Config{
		"no conn string":   {Channel: "c", Handler: h},
		"bad conn string":  {ConnString: "postgres://x:secret@[::1", Channel: "c", Handler: h},
		"no channel":       {ConnString: testsvc.PostgresURL(), Handler: h},
		"bad channel":      {ConnString: testsvc.PostgresURL(), Channel: "a;b", Handler: h},
		"too long channel": {ConnString: testsvc.PostgresURL(), Channel: strings.Repeat("c", 64), Handler: h},
		"no handler":       {ConnString: testsvc.PostgresURL(), Channel: "c"},
	} {
		_, err := NewListener(cfg)
		if err == nil {
			t.Errorf("%s: NewListener accepted it", name)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error shows the password: %v", name, err)
		}
	}
}

func TestCloseWithoutStart(t *testing.T) {
	l, err := NewListener(Config{ConnString: testsvc.PostgresURL(), Channel: "c", Handler: func(Notification) {}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	l.Start() // after Close: does nothing
	if err := l.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestUnreachableServerReportsAndRetries(t *testing.T) {
	errs := make(chan error, 10)
	l, err := NewListener(Config{
		ConnString: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?connect_timeout=1", testsvc.FreePort(t)),
		Channel:    "c",
		Handler:    func(Notification) {},
		OnError: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
		ReconnectDelay: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	l.Start()
	for range 2 {
		select {
		case <-errs:
		case <-time.After(10 * time.Second):
			t.Fatal("OnError not called")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
