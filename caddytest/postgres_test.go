package caddytest

import (
	"context"
	"fmt"
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
	d := dial(t, in2)
	d.welcome()
	d.send(`{"type":"hello","caps":[]}`)
	d.send(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":3}}`)
	d.send(`{"type":"subscribe-batch","topics":["chat"],"ref":1}`)
	d.expect(`{"type":"resumed"}`)
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
