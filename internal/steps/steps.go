// Package steps assembles parry's response steps: their declared specs (the
// registry playbooks are validated against) and, for the embedded default,
// the in-process handlers with their clients injected. parry run and the
// end-to-end tests both build the steps here, so they run the same thing.
package steps

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/functions/failed"
	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
)

// Dirs are where the in-process steps find their configuration and keep
// their state.
type Dirs struct {
	Config string // config/: the compiled playbooks
	State  string // beside the journal
}

// Specs is every step playbooks may use, by function name.
func Specs() playbook.Registry {
	reg := playbook.Registry{}
	for _, spec := range []function.Spec{classify.Spec(), isolate.Spec(), snapshot.Spec(), respawn.Spec(), revoke.Spec()} {
		reg[spec.Name] = spec
	}
	return reg
}

// InProcess builds the response steps that run in-process under parry run,
// each with its clients injected, keyed by the Knative Service name that
// runs it in a cluster (the name Trigger subscribers reference). Steps read
// their parameters and guardrails from the playbooks compiled into config/
// (the ConfigMap a cluster mounts), and keep their state (classify's
// baselines and open incidents, evidence bundles) beside the journal.
func InProcess(s *stack.Stack, log zerolog.Logger, dirs Dirs) (map[string]broker.Handler, error) {
	configDir, stateDir := dirs.Config, dirs.State
	hc := httpclient.New(30 * time.Second)
	fns := map[string]broker.Handler{
		failed.Name: failed.New(failed.HTTPPublisher(s.BrokerURL(stack.DefaultBroker), hc)).Handle,
	}
	bundle, err := playbook.LoadBundle(configDir)
	if errors.Is(err, os.ErrNotExist) {
		log.Warn().Err(err).Msg("no compiled playbooks: only the broker runs (parry playbook compile --out config/ playbooks/)")
		return fns, nil
	}
	if err != nil {
		return nil, err
	}

	var kube kubernetes.Interface
	var meta metadata.Interface
	if os.Getenv("KUBECONFIG") == "" {
		log.Info().Msg("no cluster (KUBECONFIG is unset): Kubernetes actions are skipped with that reason in the trace; in-kernel actions still apply")
	} else if cfg, err := fnmain.KubeConfig(); err != nil {
		return nil, err
	} else {
		if kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, err
		}
		if meta, err = metadata.NewForConfig(cfg); err != nil {
			return nil, err
		}
	}
	sensors := fnmain.LocalSensor(s.Sensor, hc)

	c, err := classify.New(classify.Options{Bundle: bundle, StorePath: filepath.Join(stateDir, "classify.json"), Log: log})
	if err != nil {
		return nil, err
	}
	fns[classify.Name] = c.Handle
	fns[isolate.Name] = isolate.New(kube, sensors, bundle, log).Handle
	fns[snapshot.Name] = snapshot.New(kube, meta, sensors, bundle, filepath.Join(stateDir, "evidence"), log).Handle
	rs := respawn.New(kube, bundle, log)
	go rs.Reap(s.Context(), 30*time.Second)
	fns[respawn.Name] = rs.Handle

	if os.Getenv("VAULT_ADDR") == "" {
		log.Info().Str("function", revoke.Name).Msg("not registered: VAULT_ADDR is unset (set VAULT_ADDR and VAULT_TOKEN, a token of functions/revoke/policy.hcl, to revoke Vault credentials)")
		return fns, nil
	}
	vault, err := revoke.NewVaultClient()
	if err != nil {
		return nil, err
	}
	r, err := revoke.New(vault, revoke.Options{Kube: kube, Playbooks: bundle}, log)
	if err != nil {
		return nil, err
	}
	fns[revoke.Name] = r.Handle
	return fns, nil
}
