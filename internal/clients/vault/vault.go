// Package vault builds parry's Vault client and keeps a step logged in with
// its pod's service account. It is apart from package clients so that what
// links the Kubernetes clients (the sensor) does not link Vault's.
package vault

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/httpclient"
)

// New builds a client of the Vault server at addr with token on parry's
// HTTP client. The broker retries a failed delivery, so the client itself
// does not: one attempt per call keeps a delivery's time bounded. (The
// Vault library itself takes its TLS settings, VAULT_CACERT and friends,
// from the environment.)
func New(addr, token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client configuration: %w", cfg.Error)
	}
	// DefaultConfig's transport carries the TLS settings; keep it and take
	// parry's timeout.
	transport := cfg.HttpClient.Transport
	cfg.HttpClient = httpclient.New(30 * time.Second)
	if transport != nil {
		cfg.HttpClient.Transport = transport
	}
	if addr != "" {
		cfg.Address = addr
	}
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", cfg.Address, err)
	}
	// NewClient takes VAULT_TOKEN from the environment on its own; an
	// explicit token wins.
	if token != "" {
		c.SetToken(token)
	}
	return c, nil
}

// LoginKubernetes logs client in through Vault's kubernetes auth method with
// the pod's own service-account token (jwtPath, default the projected
// token's path), as a step does in a cluster. It returns the token's TTL:
// log in again before it passes (KeepLoggedIn does).
func LoginKubernetes(ctx context.Context, client *vaultapi.Client, mount, role, jwtPath string) (time.Duration, error) {
	if mount == "" {
		mount = "kubernetes"
	}
	if jwtPath == "" {
		jwtPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	}
	jwt, err := os.ReadFile(jwtPath)
	if err != nil {
		return 0, fmt.Errorf("reading the service-account token for Vault login: %w", err)
	}
	path := "auth/" + strings.Trim(mount, "/") + "/login"
	s, err := client.Logical().WriteWithContext(ctx, path, map[string]any{"role": role, "jwt": strings.TrimSpace(string(jwt))})
	if err != nil {
		return 0, fmt.Errorf("vault login at %s as role %q: %w", path, role, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return 0, fmt.Errorf("vault login at %s as role %q returned no token", path, role)
	}
	client.SetToken(s.Auth.ClientToken)
	return time.Duration(s.Auth.LeaseDuration) * time.Second, nil
}

// KeepLoggedIn logs in again at half of each token's TTL until ctx ends (the
// projected service-account token file is rotated by the kubelet, so each
// login reads it afresh). A failed login is retried after 10 s; meanwhile the
// old token serves until it expires.
func KeepLoggedIn(ctx context.Context, client *vaultapi.Client, mount, role string, ttl time.Duration, log zerolog.Logger) {
	for {
		next := ttl / 2
		if ttl <= 0 {
			next = 10 * time.Second
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		var err error
		if ttl, err = LoginKubernetes(ctx, client, mount, role, ""); err != nil {
			log.Error().Err(err).Msg("renewing the step's own Vault login; retrying in 10s")
		}
	}
}
