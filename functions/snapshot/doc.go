// Package snapshot saves an evidence bundle that outlives the pod: its spec
// and status, owner chain, Kubernetes events, container logs (or why they
// are unavailable), the sensor's flight recorder for the pod (process tree,
// connections, files — also when the pod is already gone, the ephemeral
// case) and SHA-256 hashes of the executed binaries where readable.
//
// Each bundle is a directory in the evidence store with a manifest.json of
// the SHA-256 digest of every file; the reply carries the manifest's own
// digest, so the journal holds what the bundle must hash to and tampering
// with either is detectable (Verify).
package snapshot
