package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

var notifySerial atomic.Int64

// notifyChannel returns a channel name no other test (in this process or
// another) LISTENs on, so that tests cannot hear each other.
func notifyChannel() string {
	return fmt.Sprintf("rt_caddy_%d_%d", os.Getpid(), notifySerial.Add(1))
}

// pgGlobal is the realtime global option with the test PostgreSQL and, if
// redisAddr is set, a Redis.
func pgGlobal(redisAddr string) string {
	g := "\trealtime {\n\t\tpostgres " + testsvc.PostgresURL() + "\n"
	if redisAddr != "" {
		g += "\t\tredis redis://" + redisAddr + " {\n\t\t\tkey_prefix t:\n\t\t}\n"
	}
	return g + "\t}"
}

// startNotifyCluster starts a throwaway redis-server (a Redis Cluster with
// REALTIME_TEST_REDIS_CLUSTER=1) and n Caddy instances sharing it and the
// test PostgreSQL, each serving site.
func startNotifyCluster(t testing.TB, n int, site string) []*instance {
	t.Helper()
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	var addr string
	if onRedisCluster() {
		addr = testsvc.StartCluster(t).Addr()
	} else {
		addr = testsvc.StartRedis(t).Addr()
	}
	global := pgGlobal(addr)
	var nodes []*instance
	for range n {
		nodes = append(nodes, startCaddyWith(t, global, site))
	}
	return nodes
}

func pgNotify(t testing.TB, pool *pgxpool.Pool, channel, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
		t.Fatalf("pg_notify: %v", err)
	}
}

// notifyState is a channel's entry in GET /stats.
type notifyState struct {
	Channel  string `json:"channel"`
	Mode     string `json:"mode"`
	State    string `json:"state"`
	Leader   bool   `json:"leader"`
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
}

func notifyStats(t testing.TB, in *instance, channel string) notifyState {
	t.Helper()
	status, body := apiCall(t, http.MethodGet, in.url("/_realtime/stats"), "", "")
	if status != http.StatusOK {
		t.Fatalf("stats: %d %s", status, body)
	}
	var s struct {
		Notify []notifyState `json:"notify"`
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("stats body %s: %v", body, err)
	}
	for _, n := range s.Notify {
		if n.Channel == channel {
			return n
		}
	}
	t.Fatalf("stats %s: no notify entry for %s", body, channel)
	return notifyState{}
}

// awaitListening waits until every instance's listener on channel is
// listening (mode all).
func awaitListening(t testing.TB, channel string, nodes ...*instance) {
	t.Helper()
	for _, in := range nodes {
		waitFor(t, 10*time.Second, "the notify listener of "+in.addr(), func() bool {
			return notifyStats(t, in, channel).State == "listening"
		})
	}
}

// awaitLeader waits until exactly one of nodes leads channel, the others
// standing by, and returns its index.
func awaitLeader(t testing.TB, channel string, nodes []*instance) int {
	t.Helper()
	leader := -1
	waitFor(t, 10*time.Second, "a single notify leader", func() bool {
		leader = -1
		for i, in := range nodes {
			s := notifyStats(t, in, channel)
			switch {
			case s.Leader && s.State == "listening":
				if leader >= 0 {
					return false
				}
				leader = i
			case s.State != "standby":
				return false
			}
		}
		return leader >= 0
	})
	return leader
}

// awaitEvent reads frames until one of topic with event arrives, skipping
// others (a resync published as a leader took over, heartbeats).
func awaitEvent(t testing.TB, c *wsClient, topic, event string) envelope {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var e envelope
		raw := c.next(time.Until(deadline))
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			t.Fatalf("frame %s: %v", raw, err)
		}
		if e.Topic == topic && e.Event == event {
			return e
		}
	}
	t.Fatalf("no %s on %s within 10s", event, topic)
	return envelope{}
}

// notifyMetricsText returns the Prometheus text of an instance.
func notifyMetricsText(t testing.TB, in *instance) string {
	t.Helper()
	resp, err := adminClient(in).Get("http://admin/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// A NOTIFY reaches a subscribed client as a publish, its data compacted;
// a second channel maps its fields (table/op/row); invalid payloads and
// "__" topics are dropped and counted, in /stats and in the metrics.
func TestNotifyReachesClients(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	plain, mapped := notifyChannel(), notifyChannel()
	in := startCaddyWith(t, pgGlobal(""), fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		notify %s
		notify %s {
			topic_field table
			event_field op
			data_field row
		}
	}`, plain, mapped))
	awaitListening(t, plain, in)
	awaitListening(t, mapped, in)
	if s := notifyStats(t, in, plain); s.Mode != "all" {
		t.Fatalf("mode %q without redis, want all", s.Mode)
	}
	c := subscribedLegacy(t, in, "news", "orders")

	pgNotify(t, pool, plain, `{"topic":"news","event":"posted","data":{"id": 1,
		"title": "hi"}}`)
	c.expect(`{"topic":"news","event":"posted","data":{"id":1,"title":"hi"},"seq":1}`)
	pgNotify(t, pool, mapped, `{"table":"orders","op":"INSERT","row":{"id":7},"topic":"news"}`)
	c.expect(`{"topic":"orders","event":"INSERT","data":{"id":7},"seq":1}`)

	for _, p := range []string{
		`not json`,
		`{"topic":"news"}`,
		`{"topic":"__realtime","event":"degraded"}`,
		`{"topic":"__presence:news","event":"join"}`,
	} {
		pgNotify(t, pool, plain, p)
	}
	pgNotify(t, pool, plain, `{"topic":"news","event":"after"}`)
	c.expect(`{"topic":"news","event":"after","data":null,"seq":2}`)
	if s := notifyStats(t, in, plain); s.Received != 2 || s.Dropped != 4 {
		t.Fatalf("stats %+v, want 2 received and 4 dropped", s)
	}
	m := notifyMetricsText(t, in)
	for _, want := range []string{
		fmt.Sprintf(`caddy_realtime_notify_dropped_total{channel=%q,gateway="/ws",reason="invalid"} 2`, plain),
		fmt.Sprintf(`caddy_realtime_notify_dropped_total{channel=%q,gateway="/ws",reason="system_topic"} 2`, plain),
		fmt.Sprintf(`caddy_realtime_notify_received_total{channel=%q,gateway="/ws"} 2`, plain),
		fmt.Sprintf(`caddy_realtime_notify_received_total{channel=%q,gateway="/ws"} 1`, mapped),
		`caddy_realtime_published_total{gateway="/ws",source="notify"} 3`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// triggerSQL is the README's trigger example, in the test's schema (%[1]s)
// and on the test's channel (%[2]s).
const triggerSQL = `
CREATE TABLE %[1]s.todos (id serial PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);

CREATE FUNCTION %[1]s.todos_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r       %[1]s.todos := CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
  event   text  := CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END;
  payload text  := json_build_object('topic', 'todos', 'event', event, 'data', row_to_json(r))::text;
BEGIN
  IF octet_length(payload) >= 8000 THEN
    -- Too large for NOTIFY: send the id; the client refetches the row.
    payload := json_build_object('topic', 'todos', 'event', event,
                                 'data', json_build_object('id', r.id, 'partial', true))::text;
  END IF;
  PERFORM pg_notify('%[2]s', payload);
  RETURN NULL;
END $$;

CREATE TRIGGER todos_notify AFTER INSERT OR UPDATE OR DELETE ON %[1]s.todos
  FOR EACH ROW EXECUTE FUNCTION %[1]s.todos_notify();
`

// A real trigger: INSERT, UPDATE and DELETE reach a client as the created,
// updated and deleted events a crud() store applies, in commit order; a
// rolled-back write sends nothing; a row too large for NOTIFY sends its id.
func TestNotifyTrigger(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	channel := notifyChannel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, fmt.Sprintf(triggerSQL, pgx.Identifier{schema}.Sanitize(), channel)); err != nil {
		t.Fatal(err)
	}
	in := startCaddyWith(t, pgGlobal(""), fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		replay todos
		notify %s
	}`, channel))
	awaitListening(t, channel, in)
	c := subscribedLegacy(t, in, "todos")

	table := pgx.Identifier{schema, "todos"}.Sanitize()
	for _, q := range []string{
		"INSERT INTO " + table + " (title) VALUES ('milk')",
		"UPDATE " + table + " SET done = true WHERE id = 1",
		"DELETE FROM " + table + " WHERE id = 1",
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+table+" (title) VALUES ('never')"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO "+table+" (title) VALUES ('eggs')"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO "+table+" (title) VALUES (repeat('x', 9000))"); err != nil {
		t.Fatal(err)
	}
	c.expect(`{"topic":"todos","event":"created","data":{"id":1,"title":"milk","done":false},"seq":1}`)
	c.expect(`{"topic":"todos","event":"updated","data":{"id":1,"title":"milk","done":true},"seq":2}`)
	c.expect(`{"topic":"todos","event":"deleted","data":{"id":1,"title":"milk","done":true},"seq":3}`)
	// id 2 went with the rollback; its notification never left.
	c.expect(`{"topic":"todos","event":"created","data":{"id":3,"title":"eggs","done":false},"seq":4}`)
	c.expect(`{"topic":"todos","event":"created","data":{"id":4,"partial":true},"seq":5}`)
}

// After pg_terminate_backend of the LISTEN connection the listener
// reconnects, the gateway publishes resync on the configured topic (the
// gap-recovery signal), and later notifications arrive again.
func TestNotifyReconnectPublishesResync(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	channel := notifyChannel()
	// Trust auth takes any password: one that must never show in the logs.
	global := strings.Replace(pgGlobal(""), "postgres@", "postgres:s3cret-pw@", 1)
	if !strings.Contains(global, "s3cret-pw") {
		t.Skip("the test PostgreSQL URL has no user@ to add a password to")
	}
	in := startCaddyWith(t, global, fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		notify %s {
			resync todos
		}
	}`, channel))
	awaitListening(t, channel, in)
	c := subscribedLegacy(t, in, "todos")
	pgNotify(t, pool, channel, `{"topic":"todos","event":"created","data":1}`)
	c.expect(`{"topic":"todos","event":"created","data":1,"seq":1}`)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'caddy-realtime notify' AND query = $1`, `LISTEN "`+channel+`"`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("terminated %d LISTEN backends, want 1", n)
	}
	// Whatever is sent now, while the listener is down, is lost: resync
	// tells the client so.
	c.expect(fmt.Sprintf(`{"topic":"todos","event":"resync","data":{"channel":%q},"seq":2}`, channel))
	pgNotify(t, pool, channel, `{"topic":"todos","event":"created","data":3}`)
	c.expect(`{"topic":"todos","event":"created","data":3,"seq":3}`)
	if !strings.Contains(in.logs.String(), "notify listener lost PostgreSQL") {
		t.Error("the lost connection was not logged")
	}
	if strings.Contains(in.logs.String(), "s3cret-pw") {
		t.Error("the logs show the password")
	}
}

// notify without the global postgres option fails at provisioning, naming
// the option to add.
func TestNotifyWithoutPostgresIsAProvisionError(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	cfg := "{\n\tadmin off\n}\n\nhttp://127.0.0.1:1 {\n\trealtime {\n\t\tnotify todos\n\t}\n}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("caddy validate accepted it:\n%s", out)
	}
	// The log line is JSON: the quotes around the channel are escaped.
	if want := `todos\": needs the global option realtime { postgres <dsn> }`; !strings.Contains(string(out), want) {
		t.Fatalf("caddy validate said:\n%s\nwant %q", out, want)
	}
}

// Mode all on three instances: each instance hears the channel and
// delivers to its own clients, so every client gets each notification
// exactly once, in order. A topic replayed in the shared Redis store is
// dropped and counted instead of being stored three times.
func TestNotifyClusterModeAllOncePerClient(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	channel := notifyChannel()
	nodes := startNotifyCluster(t, 3, fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat* {
			store redis
		}
		notify %s {
			mode all
		}
	}`, channel))
	awaitListening(t, channel, nodes...)
	var clients []*wsClient
	for _, in := range nodes {
		clients = append(clients, subscribedLegacy(t, in, "news", "chat"))
	}
	for i := 1; i <= 10; i++ {
		pgNotify(t, pool, channel, fmt.Sprintf(`{"topic":"news","event":"n","data":%d}`, i))
	}
	pgNotify(t, pool, channel, `{"topic":"chat","event":"n","data":0}`)
	pgNotify(t, pool, channel, `{"topic":"news","event":"fence"}`)
	for ci, c := range clients {
		for i := 1; i <= 10; i++ {
			e := nextEnvelope(t, c)
			if e.Topic != "news" || e.Event != "n" || string(e.Data) != fmt.Sprint(i) {
				t.Fatalf("client %d: frame %d is %+v", ci, i, e)
			}
		}
		// A duplicate, or the chat notification, would come before the fence.
		if e := nextEnvelope(t, c); e.Event != "fence" {
			t.Fatalf("client %d: got %+v, want the fence", ci, e)
		}
	}
	for _, in := range nodes {
		if s := notifyStats(t, in, channel); s.Dropped != 1 || s.Received != 12 {
			t.Fatalf("%s: stats %+v, want 12 received and the chat one dropped", in.addr(), s)
		}
		if !strings.Contains(notifyMetricsText(t, in), fmt.Sprintf(`caddy_realtime_notify_dropped_total{channel=%q,gateway="/ws",reason="shared_store"} 1`, channel)) {
			t.Errorf("%s: no shared_store drop in the metrics", in.addr())
		}
		if !strings.Contains(in.logs.String(), "use mode leader") {
			t.Errorf("%s: no warning about the shared store", in.addr())
		}
	}
}

// Mode leader (the default with Redis) on three instances: one instance
// listens and publishes through the bus and the Redis replay store, so
// every client gets each notification exactly once and the replayed topic
// gets contiguous seqs.
func TestNotifyClusterLeaderOnceWithContiguousSeqs(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	channel := notifyChannel()
	nodes := startNotifyCluster(t, 3, fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat* {
			store redis
			size 100
		}
		notify %s {
			poll_interval 100ms
		}
	}`, channel))
	leader := awaitLeader(t, channel, nodes)
	if s := notifyStats(t, nodes[leader], channel); s.Mode != "leader" {
		t.Fatalf("mode %q with redis, want leader", s.Mode)
	}
	var clients []*wsClient
	for _, in := range nodes {
		clients = append(clients, subscribedLegacy(t, in, "chat", "news"))
	}
	const n = 30
	for i := 1; i <= n; i++ {
		topic := "chat"
		if i%3 == 0 {
			topic = "news"
		}
		pgNotify(t, pool, channel, fmt.Sprintf(`{"topic":%q,"event":"n","data":%d}`, topic, i))
	}
	pgNotify(t, pool, channel, `{"topic":"news","event":"fence"}`)
	pgNotify(t, pool, channel, `{"topic":"chat","event":"fence"}`)
	for ci, c := range clients {
		// Order holds per topic: chat takes the Redis store's path, news
		// the bus's, so the two interleave differently on each instance.
		var chat, news []string
		var seq uint64
		for fences := 0; fences < 2; {
			e := nextEnvelope(t, c)
			switch {
			case e.Event == "fence":
				fences++
			case e.Topic == "chat":
				chat = append(chat, string(e.Data))
				if seq++; e.Seq != seq {
					t.Fatalf("client %d: chat seq %d, want %d", ci, e.Seq, seq)
				}
			default:
				news = append(news, string(e.Data))
			}
		}
		var wantChat, wantNews []string
		for i := 1; i <= n; i++ {
			if i%3 == 0 {
				wantNews = append(wantNews, fmt.Sprint(i))
			} else {
				wantChat = append(wantChat, fmt.Sprint(i))
			}
		}
		if fmt.Sprint(chat) != fmt.Sprint(wantChat) || fmt.Sprint(news) != fmt.Sprint(wantNews) {
			t.Fatalf("client %d got chat %v and news %v, want %v and %v, each once in order", ci, chat, news, wantChat, wantNews)
		}
	}
	var received uint64
	for _, in := range nodes {
		received += notifyStats(t, in, channel).Received
	}
	if received != n+2 {
		t.Fatalf("the instances received %d notifications in all, want %d (once each)", received, n+2)
	}
	if got := rpSeq(t, nodes[(leader+1)%3], "chat"); got != `{"seq":21}` {
		t.Fatalf("seq of chat is %s, want 21 (20 events and the fence)", got)
	}
}

// When the leader instance dies (SIGKILL: no goodbye, PostgreSQL frees the
// lock as the connection drops), another takes over within a few polls,
// publishes resync, and notifications reach the survivors' clients again.
func TestNotifyClusterLeaderTakeoverAfterKill(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	channel := notifyChannel()
	nodes := startNotifyCluster(t, 3, fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		notify %s {
			poll_interval 100ms
			resync news
		}
	}`, channel))
	leader := awaitLeader(t, channel, nodes)
	var survivors []*instance
	var clients []*wsClient
	for i, in := range nodes {
		if i != leader {
			survivors = append(survivors, in)
			clients = append(clients, subscribedLegacy(t, in, "news"))
		}
	}
	pgNotify(t, pool, channel, `{"topic":"news","event":"before"}`)
	for _, c := range clients {
		awaitEvent(t, c, "news", "before")
	}

	killed := time.Now()
	if err := nodes[leader].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-nodes[leader].done
	next := awaitLeader(t, channel, survivors)
	t.Logf("takeover %s after SIGKILL (poll_interval 100ms)", time.Since(killed).Round(time.Millisecond))
	for _, c := range clients {
		if e := awaitEvent(t, c, "news", "resync"); string(e.Data) != fmt.Sprintf(`{"channel":%q}`, channel) {
			t.Fatalf("resync data %s", e.Data)
		}
	}
	pgNotify(t, pool, channel, `{"topic":"news","event":"after","data":1}`)
	pgNotify(t, pool, channel, `{"topic":"news","event":"fence"}`)
	for ci, c := range clients {
		if e := nextEnvelope(t, c); e.Event != "after" {
			t.Fatalf("client %d: got %+v, want after", ci, e)
		}
		if e := nextEnvelope(t, c); e.Event != "fence" {
			t.Fatalf("client %d: got %+v, want the fence", ci, e)
		}
	}
	if !strings.Contains(survivors[next].logs.String(), "this instance leads the notify channel") {
		t.Error("the new leader did not log its leadership")
	}
}
