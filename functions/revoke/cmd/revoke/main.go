// Command revoke runs the revoke step as a Knative Service: CloudEvents on
// $PORT (default 8080). Vault: VAULT_ADDR and VAULT_TOKEN, or, in a cluster,
// VAULT_K8S_ROLE to log in with the pod's own service account through
// Vault's kubernetes auth method (VAULT_K8S_MOUNT, default kubernetes).
// Step parameters: REVOKE_PARAMS as JSON, e.g. {"mode":"pod","leases":["database/creds/"]}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/logging"
)

func main() {
	log, err := logging.New(os.Stderr, os.Getenv("LOG_LEVEL"), os.Getenv("LOG_FORMAT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Fatal().Err(err).Msg("revoke")
	}
}

func run(ctx context.Context, log zerolog.Logger) error {
	vault, err := revoke.NewVaultClient()
	if err != nil {
		return err
	}
	if role := os.Getenv("VAULT_K8S_ROLE"); role != "" {
		mount := os.Getenv("VAULT_K8S_MOUNT")
		ttl, err := revoke.LoginKubernetes(ctx, vault, mount, role, "")
		if err != nil {
			return err
		}
		go revoke.KeepLoggedIn(ctx, vault, mount, role, ttl, log)
	}
	params := map[string]any{}
	if raw := os.Getenv("REVOKE_PARAMS"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &params); err != nil {
			return fmt.Errorf("REVOKE_PARAMS is not a JSON object: %w", err)
		}
		for k, v := range params {
			// JSON numbers decode as float64; the int parameters want ints.
			if f, ok := v.(float64); ok && f == float64(int(f)) {
				params[k] = int(f)
			}
		}
	}
	opts := revoke.Options{Params: params}
	if cfg, err := rest.InClusterConfig(); err == nil {
		if opts.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return err
		}
	} else {
		log.Info().Err(err).Msg("no in-cluster Kubernetes config: modes that read the pod will fail with that reason")
	}
	r, err := revoke.New(vault, opts, log)
	if err != nil {
		return err
	}
	addr := ":8080"
	if port := os.Getenv("PORT"); port != "" {
		addr = ":" + port
	}
	return function.Serve(ctx, addr, r.Handle, log)
}
