// Package metrics is parry's one home for Prometheus metrics: the
// collectors of the broker (Broker) and of the step runtime (Steps), each
// registered on a *prometheus.Registry the process's main creates and
// injects, and Handler, which serves a registry as /metrics. There is no
// package-level registry: two brokers in one test process count apart.
//
// Every method is safe on a nil receiver and then records nothing, so
// code built without metrics (most tests) needs no registry.
//
// The names and labels are documented in docs/metrics.md; labels take
// only values from a bounded, configured set (outcomes, reason classes,
// Trigger, step and playbook names), never pod names or event or incident
// ids.
package metrics
