// Package classify is the first step of every playbook: it turns matching
// sensor events into incidents.
//
// For each event it picks the playbook (the compiled playbooks' match
// filters, evaluated with Knative's own filter code; when several match,
// the most severe wins, then the first by name), then
//
//   - joins the open incident of the same pod and playbook when the last
//     event of that incident is within the step's dedupWindow, so one attack
//     (or a burst of it) is one incident;
//   - otherwise scores a new one: the playbook's severity points plus an
//     explainable anomaly score against the workload's learned baseline (the
//     executables, egress destinations and ports seen during its learning
//     window, persisted in a JSON store) and the Shannon entropy of host
//     names in the command line. Every point comes with a reason, written
//     into the event's data;
//   - at or above the step's threshold it replies dev.parry.incident.opened.v1
//     with the incident, playbook, severity and response extensions; below it
//     replies dev.parry.incident.suppressed.v1 (recorded, acted on by no one).
//
// Guardrails decide response: escalate (no step runs) when the pod's
// namespace is protected, when the playbook's circuit breaker is open (its
// rate limit was exceeded) or when the playbook requires a healthy sensor and
// the node's sensor reported a loss recently; dryrun when the playbook says
// so; act otherwise.
//
// Events that match no playbook (the classify-baseline Trigger) only teach
// the baseline; sensor health events record loss per node.
package classify
