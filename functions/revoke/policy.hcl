# The revoke step's own Vault policy: exactly the lookups and revocations it
# performs, nothing that reads a secret or creates a token.
# Installed as-is by revoke_test.go, which runs the step with a token of only
# this policy (plus Vault's default policy).

# Find the tokens: list every accessor (Vault requires sudo to list them) ...
path "auth/token/accessors" {
  capabilities = ["list", "sudo"]
}

# ... and read each token's metadata (pod_uid, service account) by accessor.
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

# Revoke a token (and with it its child tokens and leases) by accessor.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# Watch the revoked tokens' leases disappear: list them (sudo required; the
# bare path lists the top level, which the default lease scope starts from)
# and look one up (expiry only; the lease's secret is never returned).
path "sys/leases/lookup/*" {
  capabilities = ["list", "sudo"]
}
path "sys/leases/lookup" {
  capabilities = ["update", "list", "sudo"]
}
# ... but never under auth/ (Vault checks a listed directory without its
# trailing slash, hence both paths): the step revokes tokens by accessor and
# skips auth/ when it walks the leases; token leases are not its business.
path "sys/leases/lookup/auth" {
  capabilities = ["deny"]
}
path "sys/leases/lookup/auth/*" {
  capabilities = ["deny"]
}

# prefix mode: revoke every lease under a path. Narrow this to the secrets
# engines whose leases a playbook may cut (here: any database engine's
# credentials mounted at database/). Remove it if no playbook uses prefix mode.
path "sys/leases/revoke-prefix/database/creds/*" {
  capabilities = ["update", "sudo"]
}
