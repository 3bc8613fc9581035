// Package admission checks parry's admission manifests in config/ on the
// test environment's real API server: the ValidatingAdmissionPolicy that
// holds isolate's pod patches to the quarantine label and parry's
// annotations.
package admission
