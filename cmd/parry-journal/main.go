// Command parry-journal is the journal service of a cluster
// (internal/journalservice): it records every event of the Broker into
// PostgreSQL and serves the read API of `parry trace --journal URL`.
// config/620-journal.yaml runs it.
//
//	LOG_LEVEL, LOG_FORMAT   info, json
//	PORT                    8080
//	PARRY_POSTGRES_DSN      the database (postgres://user:password@host:5432/db?sslmode=...);
//	                        in a cluster from the Secret parry-postgres, key dsn
//	KUBECONFIG              outside a cluster; in one, its service account
//	PARRY_JOURNAL_MAX_AGE   720h: events older are deleted in the background; 0 keeps them
//	PARRY_JOURNAL_MAX_BYTES 21474836480 (20 GiB): the oldest events are deleted while
//	                        the events' own bytes are more; 0 does not bound
//	PARRY_CALLERS           "triggers" (the default): only the journal's own
//	                        Trigger (parry-system/parry-journal) may deliver,
//	                        its token reviewed by TokenReview; "any" accepts
//	                        any caller (Knative without OIDC; warned)
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/journalservice"
)

func main() { stepmain.Run(journalservice.Name, run) }

// How long review results are kept: as the sensor's API keeps them.
const (
	tokenTTL = 2 * time.Minute
	allowTTL = time.Minute
	denyTTL  = 10 * time.Second
)

func run(ctx context.Context, log zerolog.Logger) error {
	pool, err := clients.Postgres(ctx, os.Getenv("PARRY_POSTGRES_DSN"))
	if err != nil {
		return fmt.Errorf("%w (PARRY_POSTGRES_DSN, which config/620-journal.yaml takes from the Secret parry-system/parry-postgres, key dsn)", err)
	}
	defer pool.Close()
	store, err := journal.OpenPostgres(ctx, pool)
	if err != nil {
		return err
	}
	retention, err := retentionOf(log)
	if err != nil {
		return err
	}
	cfg := journalservice.Config{Recorder: store, Reader: store, Log: log,
		Pruner: journal.NewPruner(store, retention, 0, log)}
	var kube kubernetes.Interface
	kcfg, err := clients.KubeConfig(os.Getenv("KUBECONFIG"))
	switch {
	case errors.Is(err, clients.ErrNoCluster):
		log.Warn().Err(err).Msg("no Kubernetes cluster: the read API answers 503, since nobody's token can be reviewed")
	case err != nil:
		return err
	default:
		if kube, _, err = clients.Kube(kcfg); err != nil {
			return err
		}
		cfg.ReadAuthn = auth.NewTokenReview(kube, journalservice.Audience, tokenTTL)
		cfg.ReadAuthz = auth.NewSubjectAccessReview(kube, allowTTL, denyTTL)
	}
	if cfg.Callers, err = stepmain.Callers(kube, journalservice.DeliveryAudience, journalservice.TriggerCallers, log); err != nil {
		return err
	}
	svc, err := journalservice.New(cfg)
	if err != nil {
		return err
	}
	addr := ":" + stepmain.Env("PORT", "8080")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		svc.Close()
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return svc.Serve(ctx, ln)
}

// retentionOf is the journal's Retention: journal's defaults for a
// cluster's PostgreSQL, or PARRY_JOURNAL_MAX_AGE and PARRY_JOURNAL_MAX_BYTES.
func retentionOf(log zerolog.Logger) (journal.Retention, error) {
	r := journal.Retention{MaxAge: journal.DefaultMaxAge, MaxBytes: journal.DefaultPostgresMaxBytes}
	if v := os.Getenv("PARRY_JOURNAL_MAX_AGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return r, fmt.Errorf("PARRY_JOURNAL_MAX_AGE=%q: want a duration such as 720h, or 0 to keep events however old", v)
		}
		r.MaxAge = d
	}
	if v := os.Getenv("PARRY_JOURNAL_MAX_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return r, fmt.Errorf("PARRY_JOURNAL_MAX_BYTES=%q: want a number of bytes, or 0 for no bound", v)
		}
		r.MaxBytes = n
	}
	log.Info().Dur("max_age", r.MaxAge).Int64("max_bytes", r.MaxBytes).Msg("journal retention")
	return r, nil
}
