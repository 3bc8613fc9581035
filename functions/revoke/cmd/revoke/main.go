// Command revoke runs the revoke step as a Knative Service. Vault:
// VAULT_ADDR and VAULT_TOKEN, or, in a cluster, VAULT_K8S_ROLE to log in
// with the pod's own service account through Vault's kubernetes auth method
// (VAULT_K8S_MOUNT, default kubernetes). Parameters and guardrails come from
// the compiled playbooks (PARRY_PLAYBOOKS).
package main

import (
	"context"
	"os"

	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/function/fnmain"
)

func main() {
	fnmain.Main(revoke.Name, func(ctx context.Context, d fnmain.Deps) (function.Handler, error) {
		vault, err := revoke.NewVaultClient()
		if err != nil {
			return nil, err
		}
		if role := os.Getenv("VAULT_K8S_ROLE"); role != "" {
			mount := os.Getenv("VAULT_K8S_MOUNT")
			ttl, err := revoke.LoginKubernetes(ctx, vault, mount, role, "")
			if err != nil {
				return nil, err
			}
			go revoke.KeepLoggedIn(ctx, vault, mount, role, ttl, d.Log)
		}
		r, err := revoke.New(vault, revoke.Options{Kube: d.Kube, Playbooks: d.Playbooks}, d.Log)
		if err != nil {
			return nil, err
		}
		return r.Handle, nil
	})
}
