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
	cfg := journalservice.Config{Recorder: store, Reader: store, Log: log}
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
