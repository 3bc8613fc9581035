package devenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"parry.dev/parry/tests/devenv"
)

// RestartPostgres takes PostgreSQL away (connections fail while it is
// down, the positive control that it was) and brings it back on the same
// DSN with what was committed.
func TestRestartPostgresKeepsDataAndAddress(t *testing.T) {
	env := devenv.Require(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, env.PostgresDSN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE restart_kept (v text); INSERT INTO restart_kept VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	dsn := env.PostgresDSN
	restarted := make(chan error, 1)
	go func() { restarted <- env.RestartPostgres(ctx, 2*time.Second) }()

	// The open session ends, and new ones are refused, while it is down.
	deadline := time.Now().Add(10 * time.Second)
	for conn.Ping(ctx) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the session outlived the restart's shutdown")
		}
		time.Sleep(20 * time.Millisecond)
	}
	down, cancel := context.WithTimeout(ctx, time.Second)
	if c, err := pgx.Connect(down, dsn); err == nil {
		c.Close(ctx)
		t.Error("connected while PostgreSQL was meant to be down")
	}
	cancel()
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if env.PostgresDSN != dsn {
		t.Fatalf("DSN changed: %s, was %s", env.PostgresDSN, dsn)
	}
	again, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	defer again.Close(ctx)
	var v string
	if err := again.QueryRow(ctx, `SELECT v FROM restart_kept`).Scan(&v); err != nil || v != "before" {
		t.Fatalf("committed row after the restart: %q, %v", v, err)
	}
	_, _ = again.Exec(ctx, `DROP TABLE restart_kept`)
}
