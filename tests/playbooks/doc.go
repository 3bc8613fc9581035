// Package playbooks proves each shipped playbook end to end on this
// machine: the real behaviour inside a pod-shaped cgroup, the real eBPF
// sensor with the compiled sensor filters, the embedded broker with the
// compiled Triggers from config/, and classify — exactly one incident per
// attack, bursts included, and none for a benign build.
package playbooks
