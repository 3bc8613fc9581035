// Package broker is parry's embedded Knative Broker: the same Broker and
// Trigger manifests that run in a cluster, served by one process.
//
// Ingress follows Knative's contract: POST /<namespace>/<broker> with a
// CloudEvent in binary or structured mode answers 202 once the event is
// journaled, 400 naming the offending attribute for a malformed event, 413
// over the size limit and 404 for a broker no manifest defines.
//
// Filtering is Knative's own code (knative.dev/eventing/pkg/eventfilter):
// spec.filters with the exact, prefix, suffix, all, any, not and cesql
// dialects when set, otherwise spec.filter.attributes.
//
// Delivery follows the Knative delivery spec of the Trigger, or of the Broker
// when the Trigger has none: retry count, linear or exponential backoff from
// backoffDelay (backoffDelay × n, backoffDelay × 2^n for the n-th retry),
// per-attempt timeout, Knative's choice of retryable answers (5xx, 404, 408,
// 409, 429, network errors), then the dead-letter sink with the
// knativeerrordest, knativeerrorcode and knativeerrordata attributes. Every
// attempt is journaled, so pending work survives a crash.
//
// A subscriber is an HTTP URI or, for a ref to a Knative Service, the
// in-process function registered under the Service's name. A subscriber's
// reply re-enters the same broker with its causation set to the event it
// answers and the trace kept.
package broker
