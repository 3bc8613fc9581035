// Command failed runs the dead-letter sink of step Triggers as a Knative
// Service, publishing failed step events to $K_SINK (the Broker).
package main

import (
	"context"
	"errors"

	"parry.dev/parry/functions/failed"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(failed.Name, func(_ context.Context, d fnmain.Deps) (function.Handler, error) {
		if d.Sink == "" {
			return nil, errors.New("K_SINK is unset: bind this Service to the Broker with a SinkBinding")
		}
		return failed.New(failed.HTTPPublisher(d.Sink, d.HTTP)).Handle, nil
	})
}
