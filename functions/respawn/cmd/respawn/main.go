// Command respawn runs the respawn step as a Knative Service.
package main

import (
	"context"

	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(respawn.Name, func(_ context.Context, d fnmain.Deps) (function.Handler, error) {
		return respawn.New(d.Kube, d.Playbooks, d.Log).Handle, nil
	})
}
