package main

import (
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/stack"
)

// functions builds the response steps that run in-process under parry run,
// each with its clients injected, keyed by the Knative Service name that
// runs it in a cluster (the name Trigger subscribers reference).
func functions(_ *stack.Stack, _ zerolog.Logger) (map[string]broker.Handler, error) {
	fns := map[string]broker.Handler{}
	return fns, nil
}
