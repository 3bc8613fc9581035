package main

import (
	"context"
	"flag"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/journal"
)

// journalFlag is --journal of the commands that read a journal.
func journalFlag(fs *flag.FlagSet) *string {
	return fs.String("journal", defaultJournal(), "the journal to read: the SQLite file parry run writes, or a cluster's journal as a postgres:// URL")
}

// openJournal opens the journal where names, for reading: a postgres://
// (or postgresql://) URL is a cluster's PostgreSQL journal, anything else
// the path of a SQLite journal.
func openJournal(ctx context.Context, where string) (journal.Reader, error) {
	if strings.HasPrefix(where, "postgres://") || strings.HasPrefix(where, "postgresql://") {
		pool, err := clients.Postgres(ctx, where)
		if err != nil {
			return nil, err
		}
		j, err := journal.ReadPostgres(ctx, pool)
		if err != nil {
			pool.Close()
			return nil, err
		}
		return pooled{j, pool}, nil
	}
	return journal.OpenReadOnly(ctx, where)
}

// pooled is a PostgreSQL journal that closes its pool with it.
type pooled struct {
	*journal.Postgres
	pool *pgxpool.Pool
}

func (p pooled) Close() error {
	p.pool.Close()
	return nil
}
