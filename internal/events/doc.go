// Package events is the one place parry builds and reads CloudEvents.
//
// Every producer in parry — the sensor, the broker's reply path and each
// response function — builds its events here, so that the three properties
// the design depends on hold everywhere:
//
//   - ids are deterministic: the same kernel occurrence or the same step
//     answering the same cause always yields the same id, so a redelivery is
//     recognisable and every step can be idempotent;
//   - the W3C traceparent travels from the first syscall to the last step,
//     keeping one trace id per incident and a new span id per hop;
//   - each reply carries a causation link (the id of the event that caused
//     it), from which the journal rebuilds an incident's causal tree.
//
// Knative Triggers filter on attributes only, so every field a playbook
// matches on travels as a lower-case extension attribute (see the Ext*
// constants).
package events
