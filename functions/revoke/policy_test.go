package revoke_test

import (
	"slices"
	"testing"
)

// policy.hcl grants the step what it calls and nothing else: the token
// lookups and revocations by accessor, lease listing outside auth/, lease
// lookup by id, revoke-prefix
// under database/creds/ only; no secret read, no token creation, no other
// revocation, no lease listing under auth/.
func TestPolicyGrantsOnlyWhatRevokeNeeds(t *testing.T) {
	in := setup(t)
	c := vaultClient(t, in.env.VaultAddr, revokerToken(t, in, revokePolicy))
	for path, want := range map[string][]string{
		"auth/token/accessors":                         {"list", "sudo"},
		"auth/token/lookup-accessor":                   {"update"},
		"auth/token/revoke-accessor":                   {"update"},
		"sys/leases/lookup":                            {"list", "sudo", "update"},
		"sys/leases/lookup/database/creds/web/":        {"list", "sudo"},
		"sys/leases/lookup/auth/":                      {"deny"},
		"sys/leases/lookup/auth/jwt/login/":            {"deny"},
		"sys/leases/revoke-prefix/database/creds/web/": {"sudo", "update"},
		"sys/leases/revoke-prefix/database/roles/web/": {"deny"},
		"sys/leases/revoke-prefix/auth/jwt/":           {"deny"},
		"sys/leases/revoke":                            {"deny"},
		"sys/leases/revoke-force/database/":            {"deny"},
		"database/creds/web":                           {"deny"},
		"auth/token/create":                            {"deny"},
		"auth/token/revoke":                            {"deny"},
		"auth/token/lookup":                            {"deny"},
		"sys/policy/" + revokePolicy:                   {"deny"},
	} {
		got, err := c.Sys().CapabilitiesSelf(path)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: the step's token may %v, want %v", path, got, want)
		}
	}
}
