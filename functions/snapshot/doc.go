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
// Each bundle is a directory evidence/<incident>/<pod UID> in the store,
// with a manifest.json of the SHA-256 digest of every file and a
// manifest.sig, the ed25519 signature of the manifest by the step's key
// (KeyFile in the state directory). The reply carries the manifest's own
// digest and the public key, so the journal holds what the bundle must hash
// to and who signed it; `parry evidence verify` (VerifySigned) checks both.
// Ids that could leave the store are refused, and every file is written
// through an os.Root at the store.
package snapshot
