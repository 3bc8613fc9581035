// Package admission checks parry's admission-related manifests in config/
// on the test environment's real API server: the ValidatingAdmissionPolicy
// that holds isolate's pod patches to the quarantine label and parry's
// annotations, and the Pod Security levels of config/'s namespaces against
// every pod config/ runs.
package admission
