// Package respawn restores clean capacity and keeps the evidence: it takes
// the quarantined pod out of its controller (the labels its ReplicaSet
// selects on are moved into an annotation, the owner reference removed), so
// the controller creates a clean replacement at once; it waits, bounded, for
// the replacement to be Ready; and it deletes the quarantined pod only once
// the snapshot step has saved its evidence (a respawn step chained after
// snapshot.done), never before.
//
// StatefulSet pods cannot be orphaned (the replacement would need the same
// name), so they are deleted only after the snapshot. Bare pods are refused
// or recreated from their spec, per parameter.
package respawn
