package clients

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// In a cluster the connection string is the key PostgresSecretKey of the
// Secret PostgresSecret in parry-system, given to a process as the
// environment variable PostgresDSNEnv.
const (
	PostgresSecret    = "parry-postgres"
	PostgresSecretKey = "dsn"
	PostgresDSNEnv    = "PARRY_POSTGRES_DSN"
)

// ErrNoPostgres says that no PostgreSQL connection string was given.
var ErrNoPostgres = errors.New("no PostgreSQL connection string: create the Secret " + PostgresSecret + " with key " + PostgresSecretKey +
	" (a postgres:// URL) in parry-system, or set " + PostgresDSNEnv)

// Postgres connects a pool to the database at dsn and checks that it
// answers, so a bad connection string or an unreachable server is an error
// at start, not at the first event. The password never appears in errors.
func Postgres(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	if dsn == "" {
		return nil, ErrNoPostgres
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse error quotes the string with its password redacted.
		return nil, fmt.Errorf("the PostgreSQL connection string is not valid (want postgres://user:password@host:5432/db?sslmode=...): %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL at %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PostgreSQL at %s:%d, database %q as %q does not answer: %w (check the host, the credentials and that the database exists)",
			cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, cfg.ConnConfig.User, err)
	}
	return pool, nil
}

// Migrate brings component's tables to the newest of steps, in order: step
// i (0-based) is schema version i+1, applied in its own transaction with
// its version recorded in parry_schema. Replicas starting together take
// turns on an advisory lock, so each step runs once. A database whose
// version is newer than steps (a newer parry ran) is refused: an older
// binary must not write to a schema it does not know.
func Migrate(ctx context.Context, pool *pgxpool.Pool, component string, steps []string) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrating %s's schema: %w", component, err)
	}
	defer conn.Release()
	// One lock for all of parry's components: parry_schema itself is
	// created under it.
	const lockKey = 0x7061727279 // "parry"
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
		return fmt.Errorf("migrating %s's schema: %w", component, err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey) //nolint:errcheck // the session ends with the connection anyway
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS parry_schema (component text PRIMARY KEY, version integer NOT NULL, updated timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrating %s's schema: %w (the role needs CREATE on the database's public schema)", component, err)
	}
	var version int
	err = conn.QueryRow(ctx, `SELECT version FROM parry_schema WHERE component = $1`, component).Scan(&version)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("migrating %s's schema: %w", component, err)
	}
	if version > len(steps) {
		return fmt.Errorf("%s's schema is at version %d, newer than this parry knows (%d): run the newer parry, or restore a backup", component, version, len(steps))
	}
	for v := version; v < len(steps); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, steps[v]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO parry_schema (component, version) VALUES ($1, $2)
				ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated = now()`, component, v+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrating %s's schema to version %d: %w", component, v+1, err)
		}
	}
	return nil
}

// RequireSchema checks, without changing anything, that component's tables
// are at the version a reader of steps expects: for a reader (`parry
// trace`) whose role may not create tables.
func RequireSchema(ctx context.Context, pool *pgxpool.Pool, component string, steps []string) error {
	var version int
	err := pool.QueryRow(ctx, `SELECT version FROM parry_schema WHERE component = $1`, component).Scan(&version)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows), errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table: no parry_schema
		return fmt.Errorf("the database holds no %s yet (nothing of parry's has written to it)", component)
	case err != nil:
		return fmt.Errorf("reading %s's schema version: %w (is this parry's database?)", component, err)
	case version > len(steps):
		return fmt.Errorf("%s's schema is at version %d, newer than this parry knows (%d): use the newer parry", component, version, len(steps))
	case version < len(steps):
		return fmt.Errorf("%s's schema is at version %d, older than this parry reads (%d): start the newer journal service, which migrates it", component, version, len(steps))
	}
	return nil
}
