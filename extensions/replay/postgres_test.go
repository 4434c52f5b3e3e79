package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// newPostgresStore returns a store on the test PostgreSQL with a schema of
// its own, dropped in t.Cleanup.
func newPostgresStore(t testing.TB, cfg PostgresConfig) (*Postgres, *pgxpool.Pool, string) {
	t.Helper()
	pool, schema := testsvc.Postgres(t)
	if cfg.Table == "" {
		cfg.Table = schema + "." + DefaultPostgresTable
	}
	s, err := NewPostgres(pool, cfg)
	if err != nil {
		t.Fatalf("NewPostgres: %v", err)
	}
	return s, pool, schema
}

func TestPostgres(t *testing.T) {
	testStore(t, func(t *testing.T, cfg Config) Store {
		if cfg.Now != nil {
			t.Skip("the Postgres store expires entries by the server's clock")
		}
		s, _, _ := newPostgresStore(t, PostgresConfig{Config: cfg})
		return s
	})
}

func TestNewPostgresRefusesBadConfig(t *testing.T) {
	if _, err := NewPostgres(nil, PostgresConfig{}); err == nil {
		t.Error("NewPostgres accepted a nil pool")
	}
	pool, _ := testsvc.Postgres(t)
	for _, table := range []string{"a.b.c", "1abc", "a-b", `a"b`, "a;drop", ".a", "a.", "x" + string(make([]byte, 60))} {
		if _, err := NewPostgres(pool, PostgresConfig{Table: table}); err == nil {
			t.Errorf("NewPostgres accepted the table %q", table)
		}
	}
}

func TestPostgresWithoutAutoMigrateSendsNothing(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	no := false
	s, err := NewPostgres(pool, PostgresConfig{Table: schema + ".missing", AutoMigrate: &no})
	if err != nil {
		t.Fatalf("NewPostgres: %v", err)
	}
	if _, err := s.Append(context.Background(), "t", "e", nil); err == nil {
		t.Fatal("Append succeeded on a table that was never created")
	}
}

// Instances are separate pools: the counter row, not any one pool, orders
// the appends.
func TestPostgresConcurrentInstancesGetContiguousSeqs(t *testing.T) {
	s1, _, schema := newPostgresStore(t, PostgresConfig{})
	pool2, _ := testsvc.Postgres(t)
	s2, err := NewPostgres(pool2, PostgresConfig{Table: schema + "." + DefaultPostgresTable})
	if err != nil {
		t.Fatalf("NewPostgres: %v", err)
	}
	topic := uniqueTopic("instances")
	const each = 50
	var (
		mu   sync.Mutex
		seqs []uint64
		wg   sync.WaitGroup
	)
	for _, s := range []*Postgres{s1, s2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				seq, err := s.Append(context.Background(), topic, "e", json.RawMessage(`1`))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				seqs = append(seqs, seq)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.Sort(seqs)
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("sorted seqs[%d] = %d; seqs: %v", i, seq, seqs)
		}
	}
	if rg := mustSince(t, s2, topic, 0); rg.Head != 2*each || rg.Truncated || len(rg.Entries) != 2*each {
		t.Fatalf("Since(0): head %d, truncated %v, %d entries; want %d, false, %d", rg.Head, rg.Truncated, len(rg.Entries), 2*each, 2*each)
	}
}

func TestPostgresFreshInstancesMigrateTogether(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	pool2, _ := testsvc.Postgres(t)
	table := schema + ".together"
	const n = 4
	stores := make([]*Postgres, n)
	for i := range n {
		p := pool
		if i%2 == 1 {
			p = pool2
		}
		s, err := NewPostgres(p, PostgresConfig{Table: table})
		if err != nil {
			t.Fatalf("NewPostgres #%d: %v", i, err)
		}
		stores[i] = s
	}
	// Each store migrates on its first call, so these first appends race
	// their migrations across two pools.
	topic := uniqueTopic("together")
	seqs := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seqs[i], errs[i] = s.Append(context.Background(), topic, "e", nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("first Append of store %d: %v", i, err)
		}
	}
	slices.Sort(seqs)
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4}) {
		t.Fatalf("first appends got seqs %v, want 1 to 4", seqs)
	}
}

// A store built while PostgreSQL is down fails each call with an error
// naming the migration, and migrates once the server answers, however
// many calls arrive together.
func TestPostgresMigratesOnFirstCallAfterStartingUnreachable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	srv := testsvc.StartPostgres(t)
	srv.Kill()
	pool, err := pgxpool.New(context.Background(), srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	start := time.Now()
	s, err := NewPostgres(pool, PostgresConfig{})
	if err != nil {
		t.Fatalf("NewPostgres with the server down: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("NewPostgres took %v with the server down; it must send nothing", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 { // a failure is not remembered: the second call tries again
		if _, err := s.Append(ctx, "t", "e", nil); err == nil || !strings.Contains(err.Error(), "creating the tables") {
			t.Fatalf("Append with the server down: %v; want an error naming the migration", err)
		}
	}
	if _, err := s.Since(ctx, "t", 0); err == nil {
		t.Fatal("Since succeeded with the server down")
	}
	srv.Restart()
	const n = 8
	seqs := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seqs[i], errs[i] = s.Append(ctx, "t", "e", json.RawMessage(`1`))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Append #%d after the restart: %v", i, err)
		}
	}
	slices.Sort(seqs)
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("seqs after the restart: %v, want 1 to %d", seqs, n)
		}
	}
	if rg := mustSince(t, s, "t", 0); rg.Head != n || len(rg.Entries) != n {
		t.Fatalf("Since(0): head %d, %d entries; want %d and %d", rg.Head, len(rg.Entries), n, n)
	}
}

func TestPostgresKeepsPayloadBytes(t *testing.T) {
	s, pool, schema := newPostgresStore(t, PostgresConfig{})
	topic := uniqueTopic("raw")
	payloads := []string{`[]`, `{}`, `9007199254740991`, `{"b":1,"a":2}`}
	for _, p := range payloads {
		mustAppend(t, s, topic, "e", json.RawMessage(p))
	}
	rg := mustSince(t, s, topic, 0)
	for i, p := range payloads {
		if !bytes.Equal(rg.Entries[i].Data, []byte(p)) {
			t.Errorf("Since returned %q for %q", rg.Entries[i].Data, p)
		}
	}
	// The column holds the text itself, not a normalized jsonb.
	rows, err := pool.Query(context.Background(), `SELECT data FROM `+schema+`.`+DefaultPostgresTable+` WHERE topic = $1 ORDER BY seq`, topic)
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stored, payloads) {
		t.Errorf("stored %q, want %q", stored, payloads)
	}
}

func TestPostgresCleanupDeletesIdleTopics(t *testing.T) {
	const ttl = 200 * time.Millisecond
	s, pool, schema := newPostgresStore(t, PostgresConfig{Config: Config{TTL: ttl}})
	idle, busy := uniqueTopic("idle"), uniqueTopic("busy")
	appendN(t, s, idle, 3)
	time.Sleep(ttl + 50*time.Millisecond)
	appendN(t, s, busy, 2)
	n, err := s.Cleanup(context.Background())
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if n != 3 {
		t.Errorf("Cleanup deleted %d rows, want 3", n)
	}
	var left int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+schema+`.`+DefaultPostgresTable).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 2 {
		t.Errorf("%d rows left, want the busy topic's 2", left)
	}
	if h := mustHead(t, s, idle); h != 3 {
		t.Errorf("Head of the idle topic = %d after Cleanup, want 3", h)
	}
}

// An Append after expiry must not bring back the expired entries, whether
// or not Cleanup ran.
func TestPostgresExpiredEntriesStayExpired(t *testing.T) {
	const ttl = 200 * time.Millisecond
	s, _, _ := newPostgresStore(t, PostgresConfig{Config: Config{TTL: ttl}})
	topic := uniqueTopic("expired")
	appendN(t, s, topic, 2)
	time.Sleep(ttl + 50*time.Millisecond)
	start := time.Now()
	mustAppend(t, s, topic, eventFor(3), dataFor(3))
	rg := mustSince(t, s, topic, 0)
	skipIfSlow(t, start, ttl/2)
	expectRange(t, rg, 3, true, 3, 3)
}

// PostgresOnBus publishes after the commit: the bus never carries an
// event the store does not hold, each seq goes out once, and an append
// whose publish fails keeps its seq and says so with ErrUnpublished (the
// gateways fill it from the store once the bus is back).
func TestPostgresOnBusPublishesOnlyStoredEvents(t *testing.T) {
	store, _, _ := newPostgresStore(t, PostgresConfig{})
	var (
		mu       sync.Mutex
		got      []uint64
		fail     atomic.Bool
		unstored atomic.Int32
	)
	var s *PostgresOnBus
	s = NewPostgresOnBus(store, func(ctx context.Context, _ string, env []byte) error {
		if fail.Load() {
			return errors.New("bus down")
		}
		var e struct {
			InstanceID string `json:"instanceId"`
			Seq        uint64 `json:"seq"`
		}
		if err := json.Unmarshal(env, &e); err != nil || e.InstanceID != "replay" {
			return fmt.Errorf("envelope %s", env)
		}
		if h, err := s.Head(ctx, "t"); err != nil || h < e.Seq {
			unstored.Add(1)
		}
		mu.Lock()
		got = append(got, e.Seq)
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.AppendAndPublish(ctx, "t", "e", json.RawMessage(`{"i":1}`)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	slices.Sort(got)
	for i, seq := range got {
		if seq != uint64(i+1) || len(got) != 40 {
			t.Fatalf("the bus got seqs %v, want 1..40 once each", got)
		}
	}
	if n := unstored.Load(); n > 0 {
		t.Fatalf("%d events reached the bus before the store held them", n)
	}
	fail.Store(true)
	seq, err := s.AppendAndPublish(ctx, "t", "e", nil)
	if !errors.Is(err, ErrUnpublished) || seq != 41 {
		t.Fatalf("an append whose publish failed: seq %d, %v; want 41 and ErrUnpublished", seq, err)
	}
	fail.Store(false)
	if seq, err := s.AppendAndPublish(ctx, "t", "e", nil); err != nil || seq != 42 {
		t.Fatalf("after a failed publish: seq %d, %v; want 42", seq, err)
	}
	if r, err := s.Since(ctx, "t", 40); err != nil || len(r.Entries) != 2 || r.Entries[0].Seq != 41 || r.Entries[1].Seq != 42 {
		t.Fatalf("Since(40) = %+v, %v; want seqs 41 and 42", r, err)
	}
}

// A counter row lost (a restore from an older backup, a truncated table)
// must not make the store issue a seq a second time (docs/protocol.md §5.2).
func TestPostgresSeqsSurviveALostCounter(t *testing.T) {
	s, pool, schema := newPostgresStore(t, PostgresConfig{Config: Config{Size: 5000}})
	ctx := context.Background()
	appendN(t, s, "lost", 5)
	if _, err := pool.Exec(ctx, `DELETE FROM `+schema+`.`+DefaultPostgresTable+`_seq WHERE topic = 'lost'`); err != nil {
		t.Fatal(err)
	}
	if seq := mustAppend(t, s, "lost", "e", dataFor(6)); seq != 5+LossMargin+1 {
		t.Fatalf("first seq after the loss = %d, want %d", seq, 5+LossMargin+1)
	}
	if rg := mustSince(t, s, "lost", 5); !rg.Truncated {
		t.Fatalf("Since(5) after the loss = %+v, want truncated", rg)
	}
}
