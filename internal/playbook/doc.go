// Package playbook is parry's playbook format (apiVersion
// parry.dev/v1alpha1, kind Playbook): parsing with file:line:col errors,
// validation against the steps' declared parameters, and compilation into
// Knative Triggers, the sensor's SensorFilters and the runtime bundle the
// functions read their parameters and guardrails from.
//
// A playbook compiles to:
//
//   - one Trigger per step on the Broker parry-system/parry. The root step is
//     always classify; its Trigger carries the playbook's match filters 1:1.
//     Every other step's Trigger filters on the reply type of the step it
//     runs after (dev.parry.incident.opened.v1 after classify,
//     dev.parry.step.<after>.done.v1 or .failed.v1 otherwise) and on the
//     playbook extension; steps after classify also skip escalated incidents
//     (response=escalate), which is how the guardrails stop a response.
//   - its share of the sensor's SensorFilters (the union over all playbooks),
//     shipped as the ConfigMap parry-sensor-filters.
//   - its entry in the ConfigMap parry-playbooks (Bundle): match, severity,
//     description, guardrails and every step's validated parameters, which
//     classify and the other steps look up by the event's playbook extension.
//
// See playbooks/README.md for the format with examples.
package playbook
