package testsvc

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultPostgresURL is the PostgreSQL the tests use unless the environment
// variable REALTIME_TEST_POSTGRES names another (a pgx connection string).
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test"

const postgresStartHint = `start one with trust auth and a database "test", e.g.:
	pg_ctlcluster 15 main start && createdb -U postgres test
or point REALTIME_TEST_POSTGRES at one (a connection string); go test -short skips the tests that need it`

// PostgresURL returns the connection string of the test PostgreSQL
// (DefaultPostgresURL, or $REALTIME_TEST_POSTGRES).
func PostgresURL() string {
	if u := os.Getenv("REALTIME_TEST_POSTGRES"); u != "" {
		return u
	}
	return DefaultPostgresURL
}

// Postgres connects a pool to the test PostgreSQL (PostgresURL) and creates
// a schema no other test, in this process or another, uses; it returns the
// pool and the schema's name. In t.Cleanup it drops the schema with
// everything in it and closes the pool. An unreachable server fails the
// test with how to start one; only -short skips it.
func Postgres(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := PostgresURL()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("parsing the PostgreSQL connection string: %v", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > connectTimeout {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		// The connection string may hold a password: name only the host.
		where := cfg.ConnConfig.Host
		if testing.Short() {
			t.Skipf("postgres unreachable at %s (-short): %v", where, err)
		}
		t.Fatalf("postgres unreachable at %s: %v\n%s", where, err, postgresStartHint)
	}
	schema := fmt.Sprintf("rt_test_%d_%d_%s", os.Getpid(), prefixSerial.Add(1), randomHex(4))
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		pool.Close()
		t.Fatalf("creating the test schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		defer pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping the test schema %s: %v", schema, err)
		}
	})
	return pool, schema
}
