package sensor

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/sensor/api"
)

// How long review results are kept. A block is a response in progress: the
// caches keep it off the API server's round trips after isolate's first
// call. The kubelet keeps tokens 2 minutes, allowed decisions 5 and denied
// ones 30 seconds; parry takes the token's and shortens an allowed
// decision to a minute, so a revoked binding stops within one.
const (
	apiTokenTTL = 2 * time.Minute
	apiAllowTTL = time.Minute
	apiDenyTTL  = 10 * time.Second
)

// APIAccess is what a caller needs for a subresource of the API
// (api.SubresourceBlock, ...) of the sensor on node: the attributes the
// sensor authorizes, and what an auth.Static grants. node "" grants it on
// every node.
func APIAccess(subresource, node string) auth.Attributes {
	return auth.Attributes{Verb: api.VerbOf(subresource), Group: api.Group, Resource: api.Resource, Subresource: subresource, Name: node}
}

// clusterAPIAuth reviews tokens for api.Audience and asks the API server,
// with the sensor's own ServiceAccount (config/600-sensor.yaml lets it
// create both reviews).
func clusterAPIAuth(cs kubernetes.Interface) (auth.Authenticator, auth.Authorizer) {
	return auth.NewTokenReview(cs, api.Audience, apiTokenTTL), auth.NewSubjectAccessReview(cs, apiAllowTTL, apiDenyTTL)
}

// apiAuthStats count the API's decisions: /metrics serves them as
// parry_sensor_api_auth_total{result}.
type apiAuthStats struct {
	allowed, unauthenticated, forbidden, unavailable atomic.Uint64
}

// authorized serves h to callers allowed subresource on this node, and
// refuses the others: 401 without a token or with one the authenticator
// does not accept, 403 when the caller lacks the grant, 503 when either
// decision could not be made (fail closed).
func (s *Sensor) authorized(subresource string, h http.HandlerFunc) http.HandlerFunc {
	attrs := APIAccess(subresource, s.cfg.Node)
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIAuthn == nil || s.cfg.APIAuthz == nil {
			s.apiAuth.unavailable.Add(1)
			auth.Refuse(w, http.StatusServiceUnavailable, "this sensor cannot authenticate callers: it runs without a cluster to review tokens and was given no token file, so its API serves only "+api.RouteHealth)
			return
		}
		id, status, reason := auth.Check(r.Context(), r, s.cfg.APIAuthn, s.cfg.APIAuthz, attrs)
		switch status {
		case 0:
			s.apiAuth.allowed.Add(1)
			h(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
			return
		case http.StatusUnauthorized:
			s.apiAuth.unauthenticated.Add(1)
		case http.StatusForbidden:
			s.apiAuth.forbidden.Add(1)
		default:
			s.apiAuth.unavailable.Add(1)
		}
		s.log.Warn().Int(logging.FieldStatus, status).Str(logging.FieldPath, r.Method+" "+r.URL.Path).
			Str(logging.FieldUser, id.Username).Str(logging.FieldReason, reason).Msg("sensor API request refused")
		auth.Refuse(w, status, reason)
	}
}

// caller names who made the request, for the log.
func caller(r *http.Request) string {
	id, _ := auth.FromContext(r.Context())
	return id.Username
}

// mayBlock refuses to block a pod of a protected namespace (the cluster's
// and parry's own: guard.AlwaysProtected), and a pod it cannot place in a
// namespace, since then it cannot tell. It knows namespaces from its pod
// informer; without a cluster the only attribution is the cgroup path,
// which names no namespace, so nothing is refused (docs/design.md, "Trust").
func (s *Sensor) mayBlock(uid string) error {
	if s.inf == nil {
		return nil
	}
	pm, ok := s.inf.Pod(uid)
	if !ok {
		why := fmt.Sprintf("the API server lists no pod with that UID on node %s", s.cfg.Node)
		if !s.inf.Synced() {
			why = "the pod informer has not synced yet; retry"
		}
		return fmt.Errorf("cannot attribute pod %s to a namespace, so it cannot check it is not protected (%s)", uid, why)
	}
	if slices.Contains(guard.AlwaysProtected(), pm.Namespace) {
		return fmt.Errorf("pod %s (%s/%s) is in a protected namespace (%s): the sensor never blocks the cluster's or parry's own pods",
			uid, pm.Namespace, pm.Name, strings.Join(guard.AlwaysProtected(), ", "))
	}
	return nil
}
