package clients_test

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"testing"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

func TestMigrateAppliesEachStepOnceAcrossReplicas(t *testing.T) {
	dsn := devenv.Require(t).Database(t, "clients")
	ctx := context.Background()
	steps := []string{
		`CREATE TABLE t (n integer)`,
		`INSERT INTO t VALUES (1)`,
		`ALTER TABLE t ADD COLUMN m integer`,
	}
	// Four replicas start at once: each step must still run exactly once
	// (a second CREATE TABLE would fail; a second INSERT would add a row).
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := clients.Postgres(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer pool.Close()
			errs <- clients.Migrate(ctx, pool, "test", steps)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pool, err := clients.Postgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var rows, version int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT version FROM parry_schema WHERE component = 'test'`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || version != 3 {
		t.Fatalf("rows = %d, version = %d; want 1 and 3", rows, version)
	}

	// An older parry (knowing two steps) must not write to version 3.
	err = clients.Migrate(ctx, pool, "test", steps[:2])
	if err == nil || !strings.Contains(err.Error(), "newer than this parry knows") {
		t.Fatalf("older binary: err = %v, want a refusal", err)
	}
	// A failing step leaves the version where it was.
	err = clients.Migrate(ctx, pool, "test", append(steps, `ALTER TABLE nope ADD COLUMN x integer`))
	if err == nil || !strings.Contains(err.Error(), "version 4") {
		t.Fatalf("failing step: err = %v", err)
	}
	if err := pool.QueryRow(ctx, `SELECT version FROM parry_schema WHERE component = 'test'`).Scan(&version); err != nil || version != 3 {
		t.Fatalf("after a failed step version = %d (%v), want 3", version, err)
	}
}

func TestPostgresErrorsNameTheCauseWithoutThePassword(t *testing.T) {
	env := devenv.Require(t)
	ctx := context.Background()
	for name, tc := range map[string]struct{ dsn, want string }{
		"empty":          {"", "parry-postgres"},
		"not a URL":      {"postgres://u:sekrit@[::1", "not valid"},
		"wrong password": {wrongPassword(t, env.PostgresDSN), "password authentication failed"},
		"nothing there":  {"postgres://u:sekrit@127.0.0.1:1/db?sslmode=disable&connect_timeout=2", "does not answer"},
	} {
		t.Run(name, func(t *testing.T) {
			pool, err := clients.Postgres(ctx, tc.dsn)
			if err == nil {
				pool.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "sekrit") {
				t.Fatalf("err = %v; want it to contain %q and no password", err, tc.want)
			}
		})
	}
	// Positive control: the right DSN connects.
	pool, err := clients.Postgres(ctx, env.PostgresDSN)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
}

func wrongPassword(t *testing.T, dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "sekrit")
	return u.String()
}
