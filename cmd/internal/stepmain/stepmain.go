// Package stepmain is the few lines every step's main shares when it runs
// as a Knative Service: it reads the environment, builds the clients the
// step's Spec asks for (once, here), loads the compiled playbooks, and
// serves CloudEvents on $PORT, and the step's Prometheus metrics as GET
// /metrics there.
//
//	LOG_LEVEL, LOG_FORMAT    info, json
//	PORT                     8080 (Knative sets it)
//	KUBECONFIG               outside a cluster; in one, its service account
//	PARRY_PLAYBOOKS          /etc/parry/playbooks/playbooks.yaml (playbook steps)
//	PARRY_STATE_DIR          /var/lib/parry (steps that keep files)
//	PARRY_POSTGRES_DSN       the PostgreSQL a step with Spec.Postgres keeps
//	                         its state in (classify): a postgres:// URL, from
//	                         the Secret parry-postgres, key dsn; required
//	PARRY_SECRET_DIR         where the step's Secret is mounted (steps with one)
//	PARRY_INCIDENT_KEY       /etc/parry/incident-key/key: the key incidents are
//	                         sealed with (classify and the steps that act on
//	                         an incident; the Secret parry-incident-key)
//	PARRY_SENSOR_PORT        9470 (steps that talk to the node sensors)
//	PARRY_SENSOR_TOKEN       /var/run/secrets/parry/sensor/token: the step's
//	                         projected token for the sensors' audience,
//	                         sent on every call to a sensor
//	PARRY_CALLERS            "triggers" (the default): only the OIDC identities
//	                         of parry's Triggers (Knative's broker filter) may
//	                         deliver events, each request's token reviewed by
//	                         TokenReview for the Service's audience; "any"
//	                         accepts any caller (Knative without OIDC; warned)
//	K_SINK                   the Broker (publishing steps; a SinkBinding sets it)
//	VAULT_ADDR, VAULT_TOKEN  steps that need Vault; or VAULT_K8S_ROLE (and
//	                         VAULT_K8S_MOUNT, default kubernetes) to log in
//	                         with the pod's own service account
package stepmain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/clients/vault"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
)

// Main runs def until SIGTERM. It exits the process.
func Main(def step.Definition) {
	Run(def.Spec.Name, func(ctx context.Context, log zerolog.Logger) error { return run(ctx, def, log) })
}

// Run is the part of Main every parry Service shares (the steps and the
// journal service): the logger from LOG_LEVEL and LOG_FORMAT, with
// function=name on every line, and run until SIGTERM or SIGINT. A run
// error is logged and exits 1.
func Run(name string, run func(ctx context.Context, log zerolog.Logger) error) {
	log, err := logging.New(os.Stderr, Env("LOG_LEVEL", "info"), Env("LOG_FORMAT", "json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log = log.With().Str("function", name).Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error().Err(err).Msg("stopped")
		os.Exit(1)
	}
}

func run(ctx context.Context, def step.Definition, log zerolog.Logger) error {
	spec := def.Spec
	reg := metrics.NewRegistry()
	d := step.Deps{HTTP: httpclient.New(30 * time.Second), Sink: os.Getenv("K_SINK"), StateDir: Env("PARRY_STATE_DIR", "/var/lib/parry"), SecretDir: os.Getenv("PARRY_SECRET_DIR"), Getenv: os.Getenv,
		Metrics: metrics.NewSteps(reg), Log: log}
	if spec.NeedsIncidentKey() {
		key, err := step.LoadIncidentKey(Env("PARRY_INCIDENT_KEY", "/etc/parry/incident-key/key"), false)
		if err != nil {
			return err
		}
		d.IncidentKey = key
	}
	if spec.Postgres {
		// Without its database such a step would start with empty state
		// and disagree with its replicas: it does not start at all.
		pool, err := clients.Postgres(ctx, os.Getenv(clients.PostgresDSNEnv))
		if err != nil {
			return fmt.Errorf("step %s keeps its state in PostgreSQL: %w", spec.Name, err)
		}
		defer pool.Close()
		d.Postgres = pool
	}
	cfg, err := clients.KubeConfig(os.Getenv("KUBECONFIG"))
	switch {
	case errors.Is(err, clients.ErrNoCluster):
		log.Warn().Err(err).Msg("no Kubernetes cluster: steps that act on pods will fail with that reason")
	case err != nil:
		return err
	default:
		if d.Kube, d.Meta, err = clients.Kube(cfg); err != nil {
			return err
		}
		if spec.Target == step.TargetPod {
			if d.Pods, err = step.WatchPods(ctx, d.Kube); err != nil {
				return err
			}
		}
		if spec.Sensors {
			// The sensors authenticate the step by this token (the
			// kubelet rotates it; FileToken re-reads it).
			token := auth.FileToken(Env("PARRY_SENSOR_TOKEN", "/var/run/secrets/parry/sensor/token"))
			d.Sensors = step.NodeSensors(d.Kube, auth.WithToken(d.HTTP, token), Env("PARRY_SENSOR_PORT", "9470"))
		}
	}
	if spec.Playbook {
		bundle, err := playbook.LoadBundle(Env("PARRY_PLAYBOOKS", "/etc/parry/playbooks/playbooks.yaml"))
		if err != nil {
			return fmt.Errorf("%w (mount the parry-playbooks ConfigMap, or set PARRY_PLAYBOOKS)", err)
		}
		d.Playbooks = bundle
	}
	if spec.Vault {
		if d.Vault, err = vault.New(os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")); err != nil {
			return err
		}
		if role := os.Getenv("VAULT_K8S_ROLE"); role != "" {
			mount := os.Getenv("VAULT_K8S_MOUNT")
			ttl, err := vault.LoginKubernetes(ctx, d.Vault, mount, role, "")
			if err != nil {
				return err
			}
			go vault.KeepLoggedIn(ctx, d.Vault, mount, role, ttl, log)
		}
	}
	callers, err := verifyCallers(spec, d, log)
	if err != nil {
		return err
	}
	h, err := step.Build(ctx, def, d)
	if err != nil {
		return err
	}
	return step.Serve(ctx, ":"+Env("PORT", "8080"), h, callers, metrics.Handler(reg), log)
}

// verifyCallers is who may deliver events to the step: parry's Triggers,
// whose tokens Knative's broker filter sends for the Service's audience.
func verifyCallers(spec step.Spec, d step.Deps, log zerolog.Logger) (*step.Callers, error) {
	return Callers(d.Kube, step.ServiceAudience(playbook.Namespace, spec.Name), func(authn auth.Authenticator) *step.Callers {
		return step.TriggersIn(playbook.Namespace, authn)
	}, log)
}

// Callers is who may deliver events to a Service of parry's, after
// PARRY_CALLERS: by default ("triggers") the callers trusted gives for an
// authenticator of tokens for audience, reviewed by kube's TokenReview;
// "any" lets anyone deliver, with a warning; anything else is an error, as
// is checking without a cluster (kube nil).
func Callers(kube kubernetes.Interface, audience string, trusted func(auth.Authenticator) *step.Callers, log zerolog.Logger) (*step.Callers, error) {
	switch mode := Env("PARRY_CALLERS", "triggers"); {
	case mode == "any":
		log.Warn().Msg("PARRY_CALLERS=any: any caller that reaches this Service can deliver events to it; turn Knative's OIDC sender authentication on and unset PARRY_CALLERS")
		return nil, nil
	case mode != "triggers":
		return nil, fmt.Errorf("PARRY_CALLERS=%q: want triggers (the default) or any", mode)
	case kube == nil:
		return nil, errors.New("verifying who delivers events needs the API server (TokenReview), and there is no cluster: set KUBECONFIG, or PARRY_CALLERS=any to accept any caller")
	}
	return trusted(auth.NewTokenReview(kube, audience, time.Minute)), nil
}

// Env is the environment variable key, or def when it is unset or empty.
func Env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
