// Package revoke is the response step that cuts a compromised workload's
// Vault credentials — only that pod's — and waits until Vault reports the
// dynamic secrets they created gone.
//
// Modes (the playbook chooses):
//
//   - pod (default): every token whose metadata carries the pod's UID
//     (pod_uid, put there by a jwt auth role's claim_mappings from the bound
//     service-account token) is revoked by accessor. Replicas that share the
//     service account keep their tokens.
//   - serviceaccount: every token whose metadata names the pod's service
//     account (service_account_namespace + service_account_name, as the
//     kubernetes auth method sets them and the documented jwt role maps them).
//     Wider blast radius: every pod of that account loses its credentials; the
//     reply says so.
//   - prefix: every lease under the playbook's prefix parameter is revoked
//     with sys/leases/revoke-prefix. The path never comes from the pod: a
//     workload must not choose which leases parry revokes.
//
// Vault revokes a token's child leases asynchronously. Vault does not say
// which token owns a lease, but revoking a token marks its leases as
// expiring now before the call returns; the step snapshots the leases in
// scope before revoking, looks them up after, and waits (bounded) for the
// ones marked expiring to disappear.
//
// The reply names accessors (not secrets) and lease counts. No token, secret
// or password is ever put in an event or a log line.
package revoke
