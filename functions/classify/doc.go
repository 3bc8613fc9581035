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
//     window) and the Shannon entropy of host names in the command line. Every point comes with a reason, written
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
//
// State — baselines, open incidents, breakers, sensor loss — sits behind
// one small interface (store), so the decision above is written once. Under
// parry run it is a JSON file beside the journal, one lock around each
// decision and its save. In a cluster (Spec.Postgres: stepmain hands over a
// pool of the database in the Secret parry-postgres and refuses to start
// without one) it is four tables in PostgreSQL, created and migrated at
// start (clients.Migrate), shared by every replica: each event is one
// transaction that takes advisory locks on its incident (pod and playbook),
// its workload's baseline and its playbook's breaker, in that order, reads
// those rows, decides and writes back what changed. So under concurrent and
// duplicated deliveries to any number of replicas an incident opens once,
// a breaker counts every pod once and learning loses nothing; and since an
// incident's id derives from its first event and playbook and the incident
// remembers that event, a redelivered first event gets the very same reply
// from any replica. Rows are keyed by a SHA-256 of what they are about, so
// an event's strings, whatever their size or bytes, are only ever query
// parameters and never share a row with a look-alike.
package classify
