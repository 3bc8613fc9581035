// Package clients is the one factory of parry's Kubernetes and Vault
// clients. It reads no environment variable itself: the mains under cmd/
// read the environment and pass what they found.
package clients

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"parry.dev/parry/internal/httpclient"
)

// ErrNoCluster says that neither an in-cluster config nor a kubeconfig was
// found.
var ErrNoCluster = errors.New("not in a cluster and KUBECONFIG is unset")

// KubeConfig is the kubeconfig at path, or the in-cluster config when path
// is empty. client-go's default rate limit (5 requests/s, bursts of 10)
// would queue a step's writes behind another step's polling on the
// containment path, so parry's clients get more headroom.
func KubeConfig(path string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, ErrNoCluster
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// Kube builds the typed and the metadata client of cfg.
func Kube(cfg *rest.Config) (kubernetes.Interface, metadata.Interface, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes metadata client for %s: %w", cfg.Host, err)
	}
	return kube, meta, nil
}

// Vault builds a client of the Vault server at addr with token on parry's
// HTTP client. The broker retries a failed delivery, so the client itself
// does not: one attempt per call keeps a delivery's time bounded. (The
// Vault library itself takes its TLS settings, VAULT_CACERT and friends,
// from the environment.)
func Vault(addr, token string) (*vaultapi.Client, error) {
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

// VaultLoginKubernetes logs client in through Vault's kubernetes auth method with
// the pod's own service-account token (jwtPath, default the projected
// token's path), as a step does in a cluster. It returns the token's TTL:
// log in again before it passes (VaultKeepLoggedIn does).
func VaultLoginKubernetes(ctx context.Context, client *vaultapi.Client, mount, role, jwtPath string) (time.Duration, error) {
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

// VaultKeepLoggedIn logs in again at half of each token's TTL until ctx ends (the
// projected service-account token file is rotated by the kubelet, so each
// login reads it afresh). A failed login is retried after 10 s; meanwhile the
// old token serves until it expires.
func VaultKeepLoggedIn(ctx context.Context, client *vaultapi.Client, mount, role string, ttl time.Duration, log zerolog.Logger) {
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
		if ttl, err = VaultLoginKubernetes(ctx, client, mount, role, ""); err != nil {
			log.Error().Err(err).Msg("renewing the step's own Vault login; retrying in 10s")
		}
	}
}
