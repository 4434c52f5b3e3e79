package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultPostgresTable is the default PostgresConfig.Table.
const DefaultPostgresTable = "realtime_replay"

// PostgresConfig configures a Postgres store. The zero value is the default
// configuration.
type PostgresConfig struct {
	// Config holds Size and TTL. Now is ignored: entries expire by the
	// PostgreSQL server's clock, so instances with skewed clocks agree.
	Config

	// Table names the entries table, optionally schema-qualified
	// ("schema.table"); each part is a plain identifier (letters, digits,
	// '_', not starting with a digit). The counters live in "<Table>_seq".
	// Default: DefaultPostgresTable.
	Table string

	// AutoMigrate creates the tables and index when missing, on the first
	// call that needs the database (not in NewPostgres, which sends
	// nothing); a failed migration is tried again on the next call.
	// Default: true.
	AutoMigrate *bool
}

// Postgres is the Store shared by every instance of a cluster, on one
// PostgreSQL database. Two tables hold it:
//
//	<table>      (topic, seq, event, data, created_at), primary key (topic, seq)
//	<table>_seq  (topic, seq, last_append, expired_through), one row per topic
//
// data is JSON kept as text, so it comes back byte for byte. Append is one
// statement that bumps the counter row (its row lock orders concurrent
// appends, so rows commit in seq order), inserts the entry and trims the
// topic to Size. Since is one statement, so one snapshot. The counter row
// is never deleted but by ClearAll, so seqs stay monotonic across Clear
// and TTL expiry.
//
// TTL is per topic, as the Store contract says: once a topic has gone TTL
// without an Append, Since returns none of its entries, and the next Append
// marks them expired (expired_through) before they could reappear. Cleanup
// deletes the rows of idle topics; the caller runs it periodically.
//
// Every call runs with the caller's ctx and no other deadline. The store
// starts no goroutine and closes nothing; the caller owns the pool.
//
// With AutoMigrate, the store needs no database until its first call, so a
// gateway starts while PostgreSQL is down: each call first makes sure the
// tables exist (one atomic load once they do). Until a migration has
// succeeded, every call fails with an error naming the migration, and the
// next call tries again.
type Postgres struct {
	pool  *pgxpool.Pool
	table string
	size  int64
	ttlUS int64 // TTL in microseconds, 0: none
	seen  *seen // the highest seq seen per topic (Observer)

	appendSQL, headSQL, sinceSQL, clearSQL, clearAllSQL, cleanupSQL string

	// migrateStmts are the statements of the migration; nil without
	// AutoMigrate.
	migrateStmts []string
	migrated     atomic.Bool
	failing      atomic.Bool // the last call failed without an answer from the server
	mu           sync.Mutex
	running      *migration // the migration in flight, or nil; guarded by mu
}

// migration is one attempt to create the tables; callers arriving while
// it runs wait for its outcome instead of starting another.
type migration struct {
	done chan struct{} // closed when err is set
	err  error
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// NewPostgres returns a store on pool configured by cfg (zero fields take
// their defaults). It checks the table's name and sends nothing, so it
// succeeds while the database is unreachable. With AutoMigrate, the first
// call creates the tables if missing, under a transaction-scoped advisory
// lock so instances starting together do not collide.
func NewPostgres(pool *pgxpool.Pool, cfg PostgresConfig) (*Postgres, error) {
	if pool == nil {
		return nil, errors.New("replay: no PostgreSQL pool")
	}
	table := cfg.Table
	if table == "" {
		table = DefaultPostgresTable
	}
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("replay: table %q: at most one '.' (schema.table)", table)
	}
	for i, p := range parts {
		// 63 bytes is PostgreSQL's identifier limit; the table's own name
		// leaves room for the "_seq" and "_seq_idle" suffixes.
		limit := 63
		if i == len(parts)-1 {
			limit = 63 - len("_seq_idle")
		}
		if !identRE.MatchString(p) || len(p) > limit {
			return nil, fmt.Errorf("replay: table %q: %q is not an identifier of letters, digits and '_' up to %d bytes", table, p, limit)
		}
	}
	c := cfg.Config.WithDefaults()
	s := &Postgres{pool: pool, table: table, size: int64(c.Size), seen: newSeen()}
	if c.TTL > 0 {
		s.ttlUS = max(1, c.TTL.Microseconds())
	}

	name := parts[len(parts)-1]
	qualify := func(n string) string {
		id := pgx.Identifier{n}
		if len(parts) == 2 {
			id = pgx.Identifier{parts[0], n}
		}
		return id.Sanitize()
	}
	entries, counters := qualify(name), qualify(name+"_seq")
	idleIndex := pgx.Identifier{name + "_seq_idle"}.Sanitize()

	// $1 topic, $2 event, $3 data (NULL for nil), $4 size, $5 TTL in µs (0:
	// none), $6 the highest seq this process saw issued (0: none), $7
	// LossMargin. A counter missing or behind $6 lost data (a restore from
	// an old backup, a truncated table): it continues $7 above $6. The counter update locks the topic's row until commit, so the
	// appends of a topic commit one after another in seq order. When the
	// topic had been idle beyond TTL, its entries up to the previous seq
	// become expired_through and are never returned again. The trim sees
	// the statement's snapshot, so a row of a concurrent append may escape
	// it until the next append; Since bounds its result by Size anyway.
	s.appendSQL = `WITH c AS (
	INSERT INTO ` + counters + ` AS c (topic, seq, last_append, expired_through)
	VALUES ($1, CASE WHEN $6::bigint > 0 THEN $6::bigint + $7::bigint + 1 ELSE 1 END, now(),
		CASE WHEN $6::bigint > 0 THEN $6::bigint + $7::bigint ELSE 0 END)
	ON CONFLICT (topic) DO UPDATE SET
		seq = CASE WHEN c.seq < $6::bigint THEN $6::bigint + $7::bigint + 1 ELSE c.seq + 1 END,
		last_append = now(),
		expired_through = CASE
			WHEN c.seq < $6::bigint THEN $6::bigint + $7::bigint
			WHEN $5::bigint > 0 AND c.last_append < now() - $5::bigint * interval '1 microsecond' THEN c.seq
			ELSE c.expired_through END
	RETURNING c.seq, c.expired_through
), ins AS (
	INSERT INTO ` + entries + ` (topic, seq, event, data)
	SELECT $1, c.seq, $2, $3 FROM c
), trimmed AS (
	DELETE FROM ` + entries + ` e USING c
	WHERE e.topic = $1 AND e.seq <= greatest(c.seq - $4::bigint, c.expired_through)
)
SELECT seq FROM c`
	s.headSQL = `SELECT seq FROM ` + counters + ` WHERE topic = $1`
	// $1 topic, $2 after, $3 size, $4 TTL in µs. One row per entry after
	// $2, or one row of NULLs when there is none, each carrying head and
	// oldest (0: nothing retained).
	s.sinceSQL = `WITH c AS (
	SELECT seq AS head, CASE
		WHEN $4::bigint > 0 AND last_append < now() - $4::bigint * interval '1 microsecond' THEN seq
		ELSE greatest(expired_through, seq - $3::bigint) END AS floor
	FROM ` + counters + ` WHERE topic = $1
), h AS (
	SELECT coalesce((SELECT head FROM c), 0) AS head,
		coalesce((SELECT min(e.seq) FROM ` + entries + ` e, c WHERE e.topic = $1 AND e.seq > c.floor AND e.seq <= c.head), 0) AS oldest
)
SELECT h.head, h.oldest, e.seq, e.event, e.data
FROM h LEFT JOIN LATERAL (
	SELECT seq, event, data FROM ` + entries + `
	WHERE topic = $1 AND h.oldest > 0 AND seq >= h.oldest AND seq > $2 AND seq <= h.head
	ORDER BY seq
) e ON true
ORDER BY e.seq`
	s.clearSQL = `DELETE FROM ` + entries + ` WHERE topic = $1`
	s.clearAllSQL = `TRUNCATE ` + entries // counters stay: no seq is issued twice
	// $1 TTL in µs. The index on last_append finds the idle topics; the
	// primary key, their rows.
	s.cleanupSQL = `DELETE FROM ` + entries + ` e USING ` + counters + ` c
WHERE c.last_append < now() - $1::bigint * interval '1 microsecond' AND e.topic = c.topic`

	if cfg.AutoMigrate == nil || *cfg.AutoMigrate {
		s.migrateStmts = []string{
			`CREATE TABLE IF NOT EXISTS ` + entries + ` (
	topic text NOT NULL,
	seq bigint NOT NULL,
	event text NOT NULL,
	data text,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (topic, seq)
)`,
			`CREATE TABLE IF NOT EXISTS ` + counters + ` (
	topic text PRIMARY KEY,
	seq bigint NOT NULL,
	last_append timestamptz NOT NULL DEFAULT now(),
	expired_through bigint NOT NULL DEFAULT 0
)`,
			`CREATE INDEX IF NOT EXISTS ` + idleIndex + ` ON ` + counters + ` (last_append)`,
		}
	} else {
		s.migrated.Store(true)
	}
	return s, nil
}

// ready makes sure the tables exist before a call uses them. Once a
// migration has succeeded it is one atomic load. Otherwise one caller runs
// the migration with its ctx while the others wait for that attempt's
// outcome (or their own ctx), so at most one migration of this store is in
// flight; after a failure, the next call tries again.
func (s *Postgres) ready(ctx context.Context) error {
	if s.migrated.Load() {
		return nil
	}
	s.mu.Lock()
	if s.migrated.Load() {
		s.mu.Unlock()
		return nil
	}
	m := s.running
	if m != nil {
		s.mu.Unlock()
		select {
		case <-m.done:
			return m.err
		case <-ctx.Done():
			return fmt.Errorf("replay: waiting for the tables of %q to be created: %w", s.table, ctx.Err())
		}
	}
	m = &migration{done: make(chan struct{})}
	s.running = m
	s.mu.Unlock()

	if err := s.migrate(ctx); err != nil {
		m.err = fmt.Errorf("replay: creating the tables of %q (tried again on the next call): %w", s.table, err)
	}
	s.mu.Lock()
	s.running = nil
	if m.err == nil {
		s.migrated.Store(true)
	}
	s.mu.Unlock()
	close(m.done)
	return m.err
}

// migrate creates the tables and index if missing. CREATE ... IF NOT
// EXISTS alone races (two sessions may both try, and one fails on the
// catalog's unique index), so a transaction-scoped advisory lock keyed by
// the table's name serializes the instances.
func (s *Postgres) migrate(ctx context.Context) error {
	h := fnv.New64a()
	h.Write([]byte("caddy-realtime replay migration " + s.table))
	key := int64(h.Sum64() & math.MaxInt64)
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, key); err != nil {
			return err
		}
		for _, stmt := range s.migrateStmts {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
}

// note records whether a call reached the server: an error Postgres
// answered (a constraint, a bad query) still means it is reachable; a
// failed dial, a dropped connection or a timeout do not.
func (s *Postgres) note(err error) {
	var pgErr *pgconn.PgError
	s.failing.Store(err != nil && !errors.As(err, &pgErr) && !errors.Is(err, context.Canceled))
}

// Reachable reports whether the last call reached the server. Nothing is
// probed: it reflects the traffic, which is what clients live by.
func (s *Postgres) Reachable() bool { return !s.failing.Load() }

// Append implements Store with one statement.
func (s *Postgres) Append(ctx context.Context, topic, event string, data json.RawMessage) (seq uint64, err error) {
	defer func() { s.note(err) }()
	return s.append(ctx, s.pool, topic, event, data)
}

// AppendThen appends like Append, in a transaction that runs then with the
// new seq before it commits. The append statement locks the topic's counter
// row until the commit, so no other append of the topic, on any instance,
// gets its seq before then has returned: what then does (publish the event
// on a bus) happens in seq order. If then fails, the transaction rolls back
// and the seq is not used. If the commit itself fails after then succeeded
// (the connection died at that moment), the event went out without being
// stored and its seq will be given again: the one case where AppendThen
// cannot keep its promise.
func (s *Postgres) AppendThen(ctx context.Context, topic, event string, data json.RawMessage, then func(seq uint64) error) (seq uint64, err error) {
	defer func() { s.note(err) }()
	if err := s.ready(ctx); err != nil { // before BEGIN: the migration takes its own connection
		return 0, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if seq, err = s.append(ctx, tx, topic, event, data); err != nil {
			return err
		}
		return then(seq)
	})
	if err != nil {
		return 0, err
	}
	return seq, nil
}

// append runs the append statement on q (the pool, or a transaction).
func (s *Postgres) append(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, topic, event string, data json.RawMessage) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := s.ready(ctx); err != nil {
		return 0, err
	}
	var d *string // nil data is stored as NULL
	if data != nil {
		str := string(data)
		d = &str
	}
	var seq int64
	seen := int64(min(s.seen.get(topic), math.MaxInt64-LossMargin-1))
	if err := q.QueryRow(ctx, s.appendSQL, topic, event, d, s.size, s.ttlUS, seen, LossMargin).Scan(&seq); err != nil {
		return 0, fmt.Errorf("replay: append to %q: %w", topic, err)
	}
	s.seen.note(topic, uint64(seq))
	return uint64(seq), nil
}

// PostgresOnBus is a Postgres store whose appends are also published on a
// bus: every instance, the appending one included, then receives a topic's
// events from the bus. It publishes after the commit, so the bus never
// carries an event the store does not hold (a commit that fails after a
// publish would have sent a seq that is then given to another event).
// Concurrent appends of one topic may reach the bus out of seq order; the
// receiving gateway puts them back in order and fills what it did not
// receive from the store (docs/protocol.md §5.1 rule 7).
type PostgresOnBus struct {
	*Postgres
	publish func(ctx context.Context, topic string, envelope []byte) error
}

// NewPostgresOnBus wraps store so that AppendAndPublish hands publish the
// envelope {"instanceId":"replay","topic":T,"event":E,"data":D,"seq":N}
// (envelope.AppendStore); publish must send it on the bus channel of topic T (a
// routed bus has one per topic) and return once the bus has taken it.
func NewPostgresOnBus(store *Postgres, publish func(ctx context.Context, topic string, envelope []byte) error) *PostgresOnBus {
	return &PostgresOnBus{Postgres: store, publish: publish}
}

// AppendAndPublish implements BusAppender. topic and event must be valid on
// the wire (they are spliced unescaped) and data valid JSON. When the
// event is stored but the publish fails, it returns the seq with an error
// wrapping ErrUnpublished.
func (s *PostgresOnBus) AppendAndPublish(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error) {
	if !wire.ValidTopic(topic, true) || !wire.ValidEvent(event) {
		return 0, fmt.Errorf("replay: publishing to %q: topic or event not valid on the wire", topic)
	}
	seq, err := s.Append(ctx, topic, event, data)
	if err != nil {
		return 0, err
	}
	if err := s.publish(ctx, topic, envelope.AppendStore(make([]byte, 0, 64+len(topic)+len(event)+len(data)), topic, event, data, seq)); err != nil {
		return seq, fmt.Errorf("replay: publishing %q seq %d on the bus: %w: %w", topic, seq, ErrUnpublished, err)
	}
	return seq, nil
}

// Observe implements Observer.
func (s *Postgres) Observe(topic string, seq uint64) { s.seen.note(topic, seq) }

// Head implements Store.
func (s *Postgres) Head(ctx context.Context, topic string) (head uint64, err error) {
	defer func() { s.note(err) }()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := s.ready(ctx); err != nil {
		return 0, err
	}
	var seq int64
	err = s.pool.QueryRow(ctx, s.headSQL, topic).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay: head of %q: %w", topic, err)
	}
	s.seen.note(topic, uint64(seq)) // an issued seq: a lost counter continues above it
	return uint64(seq), nil
}

// Since implements Store with one statement, so one snapshot.
func (s *Postgres) Since(ctx context.Context, topic string, after uint64) (r Range, err error) {
	defer func() { s.note(err) }()
	if err := ctx.Err(); err != nil {
		return Range{}, err
	}
	if err := s.ready(ctx); err != nil {
		return Range{}, err
	}
	a := int64(min(after, math.MaxInt64))
	rows, err := s.pool.Query(ctx, s.sinceSQL, topic, a, s.size, s.ttlUS)
	if err != nil {
		return Range{}, fmt.Errorf("replay: since of %q: %w", topic, err)
	}
	defer rows.Close()
	var (
		rg           Range
		head, oldest int64
	)
	for rows.Next() {
		var (
			seq   *int64
			event *string
			data  *string
		)
		if err := rows.Scan(&head, &oldest, &seq, &event, &data); err != nil {
			return Range{}, fmt.Errorf("replay: since of %q: %w", topic, err)
		}
		if seq == nil {
			continue
		}
		e := Entry{Seq: uint64(*seq)}
		if event != nil {
			e.Event = *event
		}
		if data != nil {
			e.Data = json.RawMessage(*data)
		}
		rg.Entries = append(rg.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return Range{}, fmt.Errorf("replay: since of %q: %w", topic, err)
	}
	rg.Head = uint64(head)
	rg.Truncated = !Covers(after, rg.Head, uint64(oldest))
	s.seen.note(topic, rg.Head)
	return rg, nil
}

// Clear implements Store: it deletes the topic's rows and keeps its
// counter.
func (s *Postgres) Clear(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.ready(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, s.clearSQL, topic); err != nil {
		return fmt.Errorf("replay: clear %q: %w", topic, err)
	}
	return nil
}

// ClearAll implements Store: it truncates both tables.
func (s *Postgres) ClearAll(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.ready(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, s.clearAllSQL); err != nil {
		return fmt.Errorf("replay: clear all: %w", err)
	}
	return nil
}

// Cleanup deletes the entries of the topics idle beyond TTL, which Since
// already ignores, and returns how many it deleted. Counters stay. Without
// a TTL it does nothing. The caller runs it periodically (every TTL, or a
// few minutes), from one instance or all: concurrent runs are harmless.
func (s *Postgres) Cleanup(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.ttlUS == 0 {
		return 0, nil
	}
	if err := s.ready(ctx); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, s.cleanupSQL, s.ttlUS)
	if err != nil {
		return 0, fmt.Errorf("replay: cleanup: %w", err)
	}
	return tag.RowsAffected(), nil
}

var (
	_ Store       = (*Postgres)(nil)
	_ BusAppender = (*PostgresOnBus)(nil)
	_ Observer    = (*Postgres)(nil)
	_ Cleaner     = (*Postgres)(nil)
)
