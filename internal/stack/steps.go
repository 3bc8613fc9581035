package stack

import (
	"context"
	"crypto/rand"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/functions/failed"
	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
)

// Steps is the one list of parry's steps: the in-process assembly runs
// them, the manifests deploy them (each from its main at cmd/<name>),
// playbooks are validated against them and `parry steps` describes them.
func Steps() []step.Definition {
	return []step.Definition{
		classify.Definition(),
		isolate.Definition(),
		snapshot.Definition(),
		respawn.Definition(),
		revoke.Definition(),
		failed.Definition(),
	}
}

// Registry is the steps playbooks may name, by function name.
func Registry() playbook.Registry {
	reg := playbook.Registry{}
	for _, d := range Steps() {
		if d.Spec.Playbook {
			reg[d.Spec.Name] = d.Spec
		}
	}
	return reg
}

// buildSteps builds the in-process steps with their clients injected, keyed
// by the Knative Service name that runs each in a cluster (the name Trigger
// subscribers reference). Playbook steps read the playbooks compiled into
// config/ (the ConfigMap a cluster mounts).
func (s *Stack) buildSteps(ctx context.Context, opts Options) (map[string]events.Handler, error) {
	log := opts.Log
	hc := httpclient.New(30 * time.Second)
	d := step.Deps{HTTP: hc, Sink: s.BrokerURL(DefaultBroker), StateDir: opts.StateDir, Vault: opts.Vault, Getenv: opts.Getenv, Log: log}
	if opts.Metrics != nil {
		d.Metrics = metrics.NewSteps(opts.Metrics)
	}
	if opts.Kube == nil {
		log.Info().Msg("no cluster (KUBECONFIG is unset): Kubernetes actions are skipped with that reason in the trace; in-kernel actions still apply")
	} else {
		var err error
		if d.Kube, d.Meta, err = clients.Kube(opts.Kube); err != nil {
			return nil, err
		}
		// One watch of the cluster's pods for every in-process step.
		if d.Pods, err = step.WatchPods(ctx, d.Kube); err != nil {
			return nil, err
		}
	}
	// The incident key lives beside the journal, made on first start, so
	// incidents sealed before a restart still verify after it; a stack
	// without a state directory keeps nothing, the key included.
	if opts.StateDir == "" {
		d.IncidentKey = make([]byte, step.IncidentKeyBytes)
		rand.Read(d.IncidentKey)
	} else {
		key, err := step.LoadIncidentKey(filepath.Join(opts.StateDir, "incident.key"), true)
		if err != nil {
			return nil, err
		}
		d.IncidentKey = key
	}
	bundle, err := playbook.LoadBundle(opts.ConfigDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if slices.ContainsFunc(opts.Steps, func(d step.Definition) bool { return d.Spec.Playbook }) {
			log.Warn().Err(err).Msg("no compiled playbooks: only the broker and the steps of no playbook run (parry playbook compile --out config/ playbooks/)")
		}
	case err != nil:
		return nil, err
	default:
		d.Playbooks = bundle
	}

	fns := map[string]events.Handler{}
	for _, def := range opts.Steps {
		spec := def.Spec
		switch {
		case spec.Playbook && d.Playbooks == nil:
			continue
		case spec.Vault && d.Vault == nil:
			log.Info().Str("step", spec.Name).Msg("not registered: VAULT_ADDR is unset (set VAULT_ADDR and VAULT_TOKEN, a token of functions/revoke/policy.hcl, to revoke Vault credentials)")
			continue
		}
		d := d
		if spec.Sensors && s.Sensor != nil && s.Sensor.RecorderAddr() != "" {
			// Each step calls the sensor as itself, with its own token.
			d.Sensors = step.SensorAt(s.Sensor.RecorderAddr(), auth.WithToken(hc, auth.StaticToken(s.Tokens[StepUser(spec)])))
		}
		if spec.Publishes && !opts.InsecureIngress {
			// It sends to the ingress as itself, as its SinkBinding'd
			// Service does with its projected token in a cluster.
			d.HTTP = auth.WithToken(d.HTTP, auth.StaticToken(s.Tokens[StepUser(spec)]))
		}
		h, err := step.Build(ctx, def, d)
		if err != nil {
			return nil, err
		}
		fns[spec.Name] = h
	}
	maps.Copy(fns, opts.Functions)
	if opts.Wrap != nil {
		if err := opts.Wrap(fns); err != nil {
			return nil, err
		}
	}
	return fns, nil
}
