// Command isolate runs the isolate step as a Knative Service.
package main

import (
	"context"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(isolate.Name, func(_ context.Context, d fnmain.Deps) (function.Handler, error) {
		return isolate.New(d.Kube, d.Sensors, d.Playbooks, d.Log).Handle, nil
	})
}
