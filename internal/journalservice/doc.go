// Package journalservice is parry's journal in a cluster: a Service that
// records every event of the Broker into PostgreSQL and answers on-call's
// queries over HTTP, as the embedded broker's SQLite journal does under
// `parry run`.
//
// Recording. A catch-all Trigger (config/620-journal.yaml) delivers every
// event of Broker parry-system/parry to POST /, in binary or structured
// mode. Dead-lettered step deliveries reach it too: parry-failed publishes
// each as dev.parry.step.<step>.failed.v1 into the Broker. Deliveries are
// taken only from that Trigger's OIDC identity (step.Callers: a token for
// DeliveryAudience, reviewed by TokenReview), are group-committed (up to
// Batch.Max events, or what arrives within Batch.Linger), and are answered
// 202 only once their batch committed; a database failure is answered 503,
// so Knative's at-least-once redelivery covers the outage. A redelivered
// event is recorded once: the store keeps one row per event identity (id
// and source; the service records no sender, since the Broker's
// EventPolicies decided who may send) and ignores the rest (ON CONFLICT DO
// NOTHING), so a delivery answered 5xx after its commit did land is
// harmless.
//
// Reading. GET /v1/... serve journal.Reader's queries as JSON to callers
// with a ServiceAccount token for Audience (TokenReview) whose RBAC allows
// the query on the virtual resources of group journal.parry.dev
// (SubjectAccessReview); ClusterRole parry-journal-reader grants them all.
// Refusals fail closed: 401, 403, and 503 when a review cannot be made.
// Client is journal.Reader over this API, so `parry trace --journal URL`
// answers as it would from the store itself.
//
// A journal.Pruner (Config.Pruner) keeps the journal within its retention
// while the service runs. /healthz is open; /metrics (Prometheus text)
// needs get on metrics.journal.parry.dev.
package journalservice
