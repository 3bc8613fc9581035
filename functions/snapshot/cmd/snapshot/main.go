// Command snapshot runs the snapshot step as a Knative Service, writing
// bundles below $PARRY_EVIDENCE_DIR (default /var/lib/parry/evidence).
package main

import (
	"context"
	"os"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(snapshot.Name, func(_ context.Context, d fnmain.Deps) (function.Handler, error) {
		store := os.Getenv("PARRY_EVIDENCE_DIR")
		if store == "" {
			store = "/var/lib/parry/evidence"
		}
		return snapshot.New(d.Kube, d.Meta, d.Sensors, d.Playbooks, store, d.Log).Handle, nil
	})
}
