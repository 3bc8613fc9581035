package stack

import (
	"fmt"
	"net"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
)

// ingressTokens is the local token file (in the state directory) whose
// tokens the in-process sensor and publishing steps send to the ingress.
const ingressTokens = "tokens"

// tokenReviewTTL is how long an accepted token is trusted before it is
// reviewed again.
const tokenReviewTTL = time.Minute

// SensorSender is the identity the sensor sends events with: its
// ServiceAccount, which config/'s EventPolicy sender-sensor names.
func SensorSender() string {
	return auth.ServiceAccountUser(playbook.SensorNamespace, playbook.SensorServiceAccount)
}

// PublisherSender is the identity a step that publishes itself (the
// dead-letter sink) sends with: its ServiceAccount in parry-system.
func PublisherSender(s step.Spec) string { return auth.ServiceAccountUser(playbook.Namespace, s.ServiceAccount()) }

// ingressAuth returns each Broker's authenticator and the local tokens of
// the in-process senders (nil, nil with an insecure ingress). Locally the
// token file authenticates; with a cluster, a token the file does not hold
// is reviewed by TokenReview for the Broker's audience, so a pod's
// service-account token is accepted as Knative's ingress would.
func ingressAuth(set *manifest.Set, opts Options, stateDir string) (map[string]auth.Authenticator, map[string]string, error) {
	if opts.InsecureIngress {
		if err := loopbackOnly(opts.Listen); err != nil {
			return nil, nil, err
		}
		return nil, nil, nil
	}
	users := []string{SensorSender()}
	for _, d := range opts.Steps {
		if d.Spec.Publishes {
			users = append(users, PublisherSender(d.Spec))
		}
	}
	path := filepath.Join(stateDir, ingressTokens)
	tokens, err := auth.EnsureTokenFile(path, users...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (parry run keeps its local tokens beside the journal: pass --journal in a directory you own)", err)
	}
	file, err := auth.LoadTokenFile(path)
	if err != nil {
		return nil, nil, err
	}
	var kube kubernetes.Interface
	if opts.Kube != nil {
		if kube, err = kubernetes.NewForConfig(opts.Kube); err != nil {
			return nil, nil, err
		}
	}
	authns := map[string]auth.Authenticator{}
	for _, br := range set.Brokers {
		authns[br.Key()] = file
		if kube != nil {
			authns[br.Key()] = auth.Chain{file, auth.NewTokenReview(kube, broker.Audience(br.Key()), tokenReviewTTL)}
		}
	}
	return authns, tokens, nil
}

// loopbackOnly refuses an insecure ingress anywhere but on loopback: any
// process that can reach it could feed parry events.
func loopbackOnly(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", listen, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("an insecure ingress (--insecure-ingress) accepts events from anyone who can reach it, so it listens on loopback only: pass --listen 127.0.0.1:<port>, or drop --insecure-ingress (senders then need a token of %s)", ingressTokens)
}
