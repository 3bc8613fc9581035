// Package function is what every response step (classify, isolate,
// snapshot, revoke, respawn, ...) declares and how it runs.
//
// A step is one Handle(ctx, event) (reply, error), as in Knative func. Beside
// it, each step's package declares a Spec — like Falco Talon's actionners: a
// description, typed parameters (checked by `parry playbook validate`), the
// exact RBAC rules it needs (rendered into config/), and an example — and
// takes its clients by injection, never from package-level singletons.
//
// The same handler runs in-process under `parry run` (the embedded broker
// calls it) and in a cluster as a Knative Service, whose main is a few lines
// around Serve.
package function
