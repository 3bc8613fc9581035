package devenv

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// databases numbers the databases of one test binary, so that two tests
// starting in the same nanosecond still get their own.
var databases atomic.Int64

// Database creates a database of the test's own on the environment's
// PostgreSQL, named after prefix, drops it when the test ends, and returns
// its superuser DSN. Tests share the server, never a database.
func (e *Env) Database(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, e.PostgresDSN)
	if err != nil {
		t.Fatalf("devenv: PostgreSQL: %v", err)
	}
	name := fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano(), databases.Add(1))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		admin.Close(ctx)
		t.Fatalf("devenv: creating database %s: %v", name, err)
	}
	admin.Close(ctx)
	t.Cleanup(func() {
		admin, err := pgx.Connect(ctx, e.PostgresDSN)
		if err != nil {
			return
		}
		defer admin.Close(ctx)
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	u, err := url.Parse(e.PostgresDSN)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
