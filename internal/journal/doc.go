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
// The same file answers the on-call questions (Reader): an event by id, the
// last N, the causal tree of an incident (built from each event's causation
// link), and the incident list.
//
// In a cluster the journal is PostgreSQL (Postgres): the journal service
// records every event there in batches, idempotently by (id, source,
// sender). Knative Eventing, not parry, delivers events in a cluster, so
// that journal holds events only and its entries have no Deliveries. Both
// stores answer the same Reader; the causal trees and the incident list are
// built once, over each store's lookups.
//
// Each store's schema is a list of versioned steps applied at open: PRAGMA
// user_version in the file, clients.Migrate (component "journal") in
// PostgreSQL. A schema newer than the binary knows is refused.
//
// Retention bounds both by age and size; a Pruner applies it in the
// background, oldest events first, never (in the file) an event with a
// pending delivery. docs/design.md, "The journal", says why the defaults.
package journal
