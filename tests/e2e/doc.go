// Package e2e proves parry end to end on the local environment: a real
// control plane with a kwok node, the real sensor on this kernel, the
// embedded broker with the compiled shipped playbooks, and the in-process
// steps exactly as parry run builds them — from a miner's connect() in a
// pod's cgroup to a clean replacement pod, with the latencies of each stage.
//
// Run it alone with `make e2e`; `make test` runs it too.
package e2e
