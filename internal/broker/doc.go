// Package broker is parry's embedded Knative Broker: the same Broker and
// Trigger manifests that run in a cluster, served by one process.
//
// Ingress follows Knative's contract: POST /<namespace>/<broker> with a
// CloudEvent in binary or structured mode answers 202 once the event is
// journaled, 400 naming the offending attribute for a malformed event, 413
// over the size limit and 404 for a broker no manifest defines.
//
// Senders are authenticated as Knative's OIDC sender authentication does:
// a bearer token for the Broker's audience (Audience), verified by an
// auth.Authenticator (TokenReview in a cluster, a token file without one):
// 401 without or with a bad token, 503 when it cannot be reviewed (failed
// closed). The EventPolicies of the manifests that apply to the Broker
// then decide with Knative's semantics and filter code (the first policy
// by name naming the sender decides by its filters; with none, the
// default-authorization-mode of config-features): 403 with the sender and
// type otherwise. A subscriber's reply re-enters with the identity of the
// Trigger that delivered to it (TriggerIdentity), as Knative's broker
// filter sends it, and meets the same policies. Events whose time lies
// outside the freshness window are refused with 400 (a journaled event a
// sender retries is still a duplicate, answered 202). Dedup is by source,
// id and sender, so nobody can pre-send an id to suppress another's event.
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
