// Package clients is the one factory of parry's Kubernetes clients, of its
// PostgreSQL pools and their schema migrations (and, in clients/vault, of its
// Vault client). It reads no environment variable
// itself: the mains read the environment and pass what they found.
package clients

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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
		cfg, err = rest.InClusterConfig()
		switch {
		case errors.Is(err, rest.ErrNotInCluster):
			return nil, ErrNoCluster
		case err != nil:
			return nil, fmt.Errorf("in-cluster config: %w", err)
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
