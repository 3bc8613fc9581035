package stack

import (
	"fmt"
	"net"
	"time"

	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/playbook"
)

// tokenReviewTTL is how long an accepted token is trusted before it is
// reviewed again.
const tokenReviewTTL = time.Minute

// SensorSender is the identity the sensor sends events with: its
// ServiceAccount, which config/'s EventPolicy sender-sensor names.
func SensorSender() string {
	return auth.ServiceAccountUser(playbook.SensorNamespace, playbook.SensorServiceAccount)
}

// ingressAuth returns each Broker's authenticator (nil with an insecure
// ingress). Locally the token file (EnsureLocalTokens) authenticates; with
// a cluster, a token the file does not hold is reviewed by TokenReview for
// the Broker's audience, so a pod's service-account token is accepted as
// Knative's ingress would.
func ingressAuth(set *manifest.Set, opts Options, file *auth.TokenFile) (map[string]auth.Authenticator, error) {
	if opts.InsecureIngress {
		return nil, loopbackOnly(opts.Listen)
	}
	var kube kubernetes.Interface
	if opts.Kube != nil {
		var err error
		if kube, err = kubernetes.NewForConfig(opts.Kube); err != nil {
			return nil, err
		}
	}
	authns := map[string]auth.Authenticator{}
	for _, br := range set.Brokers {
		authns[br.Key()] = file
		if kube != nil {
			authns[br.Key()] = auth.Chain{file, auth.NewTokenReview(kube, broker.Audience(br.Key()), tokenReviewTTL)}
		}
	}
	return authns, nil
}

// loopbackOnly refuses an insecure ingress anywhere but on loopback: any
// process that can reach it could feed parry events.
func loopbackOnly(listen string) error {
	if IsLoopback(listen) {
		return nil
	}
	return fmt.Errorf("an insecure ingress (--insecure-ingress) accepts events from anyone who can reach it, so it listens on loopback only: pass --listen 127.0.0.1:<port>, or drop --insecure-ingress (senders then need a token of the file %s beside the journal)", TokenFile)
}

// IsLoopback reports whether addr (host:port) is on a loopback interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
