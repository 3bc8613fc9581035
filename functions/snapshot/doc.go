// Package snapshot saves an evidence bundle that outlives the pod: its spec
// and status, owner chain, Kubernetes events, container logs (or why they
// are unavailable), the sensor's flight recorder for the pod (process tree,
// connections, files — also when the pod is already gone, the ephemeral
// case) and SHA-256 hashes of the executed binaries, taken in the pod's
// mount namespace through the host's /proc while the process still runs.
//
// Secrets are not kept: environment values named like secrets, secrets in
// the containers' commands and in the recorded process arguments, and
// kubectl's last-applied copy of the spec are replaced by a short hash
// (internal/redact).
//
// Each bundle holds a manifest.json of the SHA-256 digest of every file and
// a manifest.sig, the ed25519 signature of the manifest by the step's key
// (KeyFile in the state directory). The reply carries the manifest's own
// digest and the public key, so the journal holds what the bundle must hash
// to and who signed it; `parry evidence get` fetches bundles and
// VerifySigned checks both.
//
// Bundles go to a Store, immutable once written (a second snapshot of the
// same incident and pod replies with the bundle stored first): DirStore,
// the default, keeps the directory <incident>/<pod UID> below
// <state dir>/evidence (in a cluster the PersistentVolumeClaim
// parry-evidence), written into a temporary directory and renamed into
// place only if absent; S3Store keeps one gzipped tar per bundle in an
// S3-compatible bucket (PARRY_EVIDENCE_STORE=s3://bucket/prefix), written
// with If-None-Match: * after a check. Ids that could leave the store are
// refused by every Store method (CheckID), every file is written through an
// os.Root, and an archive read back is checked entry by entry. Bundles
// older than PARRY_EVIDENCE_RETENTION (DefaultRetention, 90 days) are
// deleted in the background.
package snapshot
