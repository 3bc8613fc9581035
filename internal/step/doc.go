// Package step is the one runtime of parry's response steps (classify,
// isolate, snapshot, revoke, respawn, and the dead-letter sink).
//
// Each step's package exports a Definition: its Spec — like Falco Talon's
// actionners: a description, typed parameters (checked by `parry playbook
// validate`), the exact RBAC rules it needs (rendered into config/), an
// example, and what it needs from its runtime — and a constructor that
// takes its clients by injection (Deps), never from package-level
// singletons, and returns the step's Action.
//
// The runtime does the common work once, for every step: decoding the
// event, checking that it names the target the step needs, reading the
// playbook's parameters and guardrails, applying the guardrails, honouring
// dry-run, logging with stable fields, and building the done or failed
// reply. An action keeps only what the step does.
//
// The same handler runs in-process under `parry run` (the embedded broker
// calls it) and in a cluster as a Knative Service, whose main is a few lines
// around Serve.
package step
