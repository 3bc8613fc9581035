package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/journalservice"
)

// journalFlags are --journal and --token-file of the commands that read a
// journal.
type journalFlags struct{ where, tokenFile *string }

func addJournalFlags(fs *flag.FlagSet) journalFlags {
	return journalFlags{
		where:     fs.String("journal", defaultJournal(), "the journal to read: the SQLite file parry run writes; a cluster's journal service as an http(s):// URL (kubectl -n parry-system port-forward svc/parry-journal 8080:80, then http://127.0.0.1:8080); or its PostgreSQL as a postgres:// URL"),
		tokenFile: fs.String("token-file", "", "with a journal service URL: a file holding a ServiceAccount token for audience "+journalservice.Audience+" whose RBAC includes the ClusterRole parry-journal-reader (kubectl create token NAME --audience "+journalservice.Audience+" > FILE)"),
	}
}

// open opens the journal for reading: an http(s):// URL is a cluster's
// journal service, a postgres:// (or postgresql://) URL its database,
// anything else the path of a SQLite journal.
func (f journalFlags) open(ctx context.Context) (journal.Reader, error) {
	where := *f.where
	if strings.HasPrefix(where, "http://") || strings.HasPrefix(where, "https://") {
		if *f.tokenFile == "" {
			return nil, fmt.Errorf("--journal %s is a journal service, which answers only with a token: pass --token-file (kubectl create token NAME --audience %s > FILE)", where, journalservice.Audience)
		}
		return journalservice.Dial(where, auth.WithToken(httpclient.New(time.Minute), auth.FileToken(*f.tokenFile)))
	}
	if *f.tokenFile != "" {
		return nil, errors.New("--token-file goes with a journal service URL (--journal http(s)://...)")
	}
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
