// Command classify runs the classify step as a Knative Service: CloudEvents
// on $PORT, the compiled playbooks from the mounted parry-playbooks
// ConfigMap ($PARRY_PLAYBOOKS), baselines, open incidents and circuit
// breakers in a JSON store on a volume ($PARRY_CLASSIFY_STORE).
package main

import (
	"context"
	"fmt"
	"os"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
	"parry.dev/parry/internal/playbook"
)

func main() {
	fnmain.Main(classify.Name, func(_ context.Context, d fnmain.Deps) (function.Handler, error) {
		// classify evaluates the playbooks' match filters itself, so it
		// needs the whole bundle, not only its step's parameters.
		bundle, ok := d.Playbooks.(*playbook.Bundle)
		if !ok {
			return nil, fmt.Errorf("classify needs the compiled playbook bundle, got %T", d.Playbooks)
		}
		store := os.Getenv("PARRY_CLASSIFY_STORE")
		if store == "" {
			store = "/var/lib/parry/classify.json"
		}
		c, err := classify.New(classify.Options{Bundle: bundle, StorePath: store, Log: d.Log})
		if err != nil {
			return nil, err
		}
		return c.Handle, nil
	})
}
