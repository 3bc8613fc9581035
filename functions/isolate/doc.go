// Package isolate cuts one pod off the network, not its siblings, and keeps
// it running for evidence:
//
//  1. at once, an in-kernel block by the sensor on the pod's node: every
//     connect() from the pod's cgroups fails with EPERM (cgroup/connect4 and
//     connect6), whatever the CNI does with NetworkPolicies;
//  2. a quarantine label on the pod (parry.dev/quarantine=<incident>);
//  3. a NetworkPolicy that selects only the quarantined pods of that
//     incident and denies all ingress and egress but an allow-list.
//
// Every write is idempotent: a redelivered event changes nothing and gets
// the same reply. With dryRun the reply carries the exact objects that would
// have been written, and nothing is.
package isolate
