package devenv

import (
	"context"
	"net/http"
	"strconv"
)

// startVault runs `vault server -dev`: in-memory storage, unsealed, with a
// root token we choose, ready in well under a second.
func (e *Env) startVault(ctx context.Context) error {
	token := "parry-root-" + randomHex(8)
	// The dev server also listens on the API port + 1 (its cluster
	// listener; no flag moves it). If that one is taken, Vault fails with
	// "address already in use" and retryPorts picks another pair.
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		p, err := e.startProc(procSpec{name: "vault", path: e.bins.vault, args: []string{
			"server", "-dev",
			"-dev-root-token-id=" + token,
			"-dev-listen-address=" + addr,
			// Not ~/.vault-token: several environments may run at once.
			"-dev-no-store-token",
		}, env: []string{"VAULT_LOG_LEVEL=warn"}})
		if err != nil {
			return nil, err
		}
		e.VaultAddr, e.VaultToken = "http://"+addr, token
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(http.DefaultClient, e.VaultAddr+"/v1/sys/health", `"sealed":false`))
	})
}
