package main

import (
	"os"
	"path/filepath"

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
)

// functions builds the response steps that run in-process under parry run,
// each with its clients injected, keyed by the Knative Service name that
// runs it in a cluster (the name Trigger subscribers reference).
func functions(_ *stack.Stack, log zerolog.Logger, dirs runDirs) (map[string]broker.Handler, error) {
	fns := map[string]broker.Handler{}
	// classify reads the compiled playbooks from config/ (the ConfigMap a
	// cluster mounts) and keeps baselines and open incidents beside the journal.
	bundle, err := playbook.LoadBundle(dirs.Config)
	if err != nil {
		return nil, err
	}
	c, err := classify.New(classify.Options{Bundle: bundle, StorePath: filepath.Join(dirs.State, "classify.json"), Log: log})
	if err != nil {
		return nil, err
	}
	fns[classify.Name] = c.Handle
	if os.Getenv("VAULT_ADDR") == "" {
		log.Info().Str("function", revoke.Name).Msg("not registered: VAULT_ADDR is unset (set VAULT_ADDR and VAULT_TOKEN, a token of functions/revoke/policy.hcl, to revoke Vault credentials)")
	} else {
		vault, err := revoke.NewVaultClient()
		if err != nil {
			return nil, err
		}
		// No Kubernetes client yet: pod mode works from the event's poduid;
		// the modes that read the pod reply failed with that reason.
		r, err := revoke.New(vault, revoke.Options{}, log)
		if err != nil {
			return nil, err
		}
		fns[revoke.Name] = r.Handle
	}
	return fns, nil
}

// runDirs are where parry run's functions find their configuration and keep
// their state.
type runDirs struct {
	Config string // config/: the compiled playbooks
	State  string // beside the journal
}
