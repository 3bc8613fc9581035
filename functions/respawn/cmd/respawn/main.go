// Command respawn runs the respawn step as a Knative Service.
package main

import (
	"context"
	"time"

	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(respawn.Name, func(ctx context.Context, d fnmain.Deps) (function.Handler, error) {
		r := respawn.New(d.Kube, d.Playbooks, d.Log)
		go r.Reap(ctx, 30*time.Second)
		return r.Handle, nil
	})
}
