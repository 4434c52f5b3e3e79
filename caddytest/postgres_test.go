package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// A `store postgres` buffer is durable: after Caddy restarts, seqs continue
// where they were and a client resumes from before the restart without a
// gap (the memory store would start again at 1).
func TestPostgresReplaySurvivesRestart(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	table := schema + ".replay"
	global := fmt.Sprintf("\trealtime {\n\t\tpostgres %s\n\t}", testsvc.PostgresURL())
	site := fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat {
			store postgres
			table %s
			size 100
		}
	}`, table)
	in := startCaddyWith(t, global, site)
	c := subscribedLegacy(t, in, "chat")
	for i := 1; i <= 5; i++ {
		if got := publish(t, in, fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i)); got != fmt.Sprintf(`{"seq":%d}`, i) {
			t.Fatalf("publish %d answered %s", i, got)
		}
		c.expect(fmt.Sprintf(`{"topic":"chat","event":"m","data":%d,"seq":%d}`, i, i))
	}
	in.stop(15 * time.Second)

	in2 := startCaddyWith(t, global, site)
	if got := publish(t, in2, `{"topic":"chat","event":"m","data":6}`); got != `{"seq":6}` {
		t.Fatalf("first publish after the restart answered %s, want seq 6", got)
	}
	d := resumeChat(t, in2, 3)
	for i := 4; i <= 6; i++ {
		d.expect(fmt.Sprintf(`{"topic":"chat","event":"m","data":%d,"seq":%d}`, i, i))
	}
	d.expect(`{"type":"subscribed","topic":"chat","ref":1}`)

	// The rows are really in Postgres, data byte for byte.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "replay"}.Sanitize()+" WHERE topic = 'chat'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Fatalf("%d rows in %s, want 6", n, table)
	}
}

// With `store postgres` in a cluster, two instances publishing 50
// events each at once to one topic get seqs 1..100, each once; a client on
// a third instance receives all 100 once, in seq order; and a client that
// resumes on another instance gets what it missed from Postgres.
func TestPostgresClusterSeqsAndResume(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	_, schema := testsvc.Postgres(t)
	rs := testsvc.StartRedis(t)
	global := fmt.Sprintf("\trealtime {\n\t\tredis redis://%s {\n\t\t\tkey_prefix t:\n\t\t}\n\t\tpostgres %s\n\t}", rs.Addr(), testsvc.PostgresURL())
	site := fmt.Sprintf(`
	realtime {
		api /_realtime
		shutdown_spread 0
		replay chat {
			store postgres
			table %s.replay
			size 1000
		}
	}`, schema)
	a, b, c := startCaddyWith(t, global, site), startCaddyWith(t, global, site), startCaddyWith(t, global, site)
	watcher := subscribedLegacy(t, c, "chat")

	var (
		mu   sync.Mutex
		seqs = map[int]int{}
		wg   sync.WaitGroup
	)
	for _, in := range []*instance{a, b} {
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r struct{ Seq int }
				_ = json.Unmarshal([]byte(publish(t, in, `{"topic":"chat","event":"m","data":1}`)), &r)
				mu.Lock()
				seqs[r.Seq]++
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	for s := 1; s <= 100; s++ {
		if seqs[s] != 1 {
			t.Fatalf("seq %d given %d times (all: %v)", s, seqs[s], seqs)
		}
	}
	for want := 1; want <= 100; want++ {
		var e envelope
		raw := watcher.next(5 * time.Second)
		if err := json.Unmarshal([]byte(raw), &e); err != nil || e.Seq != uint64(want) {
			t.Fatalf("the client on the third instance got %s, want seq %d next", raw, want)
		}
	}
	watcher.quiet(200 * time.Millisecond)

	d := resumeChat(t, b, 90)
	for s := 91; s <= 100; s++ {
		d.expect(fmt.Sprintf(`{"topic":"chat","event":"m","data":1,"seq":%d}`, s))
	}
	d.expect(`{"type":"subscribed","topic":"chat","ref":1}`)
}

// resumeChat connects a current client to in that resumes chat from last
// seen seq and subscribes to it; the gap fill and the ack are the test's.
func resumeChat(t *testing.T, in *instance, last int) *wsClient {
	t.Helper()
	d := dial(t, in)
	d.welcome()
	d.send(`{"type":"hello","caps":[]}`)
	d.send(fmt.Sprintf(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":%d}}`, last))
	d.send(`{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
	d.expect(`{"type":"resumed"}`)
	return d
}
