// Package admission checks parry's admission-related manifests in config/
// on the test environment's real API server: the ValidatingAdmissionPolicies
// that hold isolate's pod patches to the quarantine label and parry's
// annotations, respawn's to orphaning, and respawn's pod deletes and
// creates to quarantined and recreated pods, and the Pod Security levels of config/'s namespaces against
// every pod config/ runs.
package admission
