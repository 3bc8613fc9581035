// Package journal is parry's durable record: every event the broker accepts
// and every delivery of it to a Trigger's subscriber, in an embedded SQLite
// file (pure Go, no cgo).
//
// The broker journals an event, together with one pending delivery per
// matching Trigger, before it answers 202; it marks a delivery done (and
// journals the subscriber's reply) in one transaction. So after a crash every
// accepted event still reaches its subscribers, and a delivery that completed
// is not repeated.
//
// Writes are group-committed: concurrent callers share one transaction, which
// is what lets a single SQLite file keep up with tens of thousands of events
// per second. The database runs in WAL mode with synchronous=NORMAL, which
// survives a crash of the parry process (the case the journal exists for);
// the last few milliseconds of commits can be lost if the whole machine
// loses power.
//
// The same file answers the on-call questions: an event by id, the last N,
// and the causal tree of an incident (built from each event's causation
// link).
//
// In a cluster the journal is PostgreSQL (Postgres): the journal service
// records every event there in batches, idempotently by (id, source,
// sender). Knative Eventing, not parry, delivers events in a cluster, so
// that journal holds events only and its entries have no Deliveries. Both
// stores answer the same Reader; the causal trees and the incident list are
// built once, over each store's lookups.
package journal
