package auth

import (
	"context"
	"fmt"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Attributes are what a caller asks to do, in RBAC's terms: parry's
// virtual resources (group parry.dev, resource sensors, subresources
// block, unblock, history) are granted with ordinary ClusterRoles.
type Attributes struct {
	Verb        string
	Group       string
	Resource    string
	Subresource string
	Name        string
	Namespace   string
}

func (a Attributes) String() string {
	r := a.Resource
	if a.Group != "" {
		r += "." + a.Group
	}
	if a.Subresource != "" {
		r += "/" + a.Subresource
	}
	if a.Name != "" {
		r += " " + a.Name
	}
	return a.Verb + " " + r
}

// Authorizer decides whether id may do a. A denial is (false, reason,
// nil); an error means no decision could be made, which callers treat as
// a denial (503).
type Authorizer interface {
	Authorize(ctx context.Context, id Identity, a Attributes) (bool, string, error)
}

// SubjectAccessReview asks the API server's authorizer (RBAC), caching
// allowed answers for allowTTL and denials for denyTTL, as the kubelet
// does for its own API.
type SubjectAccessReview struct {
	kube              kubernetes.Interface
	allowTTL, denyTTL time.Duration
	cache             *cache[decision]
	Stats             Stats
}

type decision struct {
	allowed bool
	reason  string
}

// NewSubjectAccessReview returns an Authorizer backed by kube.
func NewSubjectAccessReview(kube kubernetes.Interface, allowTTL, denyTTL time.Duration) *SubjectAccessReview {
	return &SubjectAccessReview{kube: kube, allowTTL: allowTTL, denyTTL: denyTTL, cache: newCache[decision](4096)}
}

func (s *SubjectAccessReview) Authorize(ctx context.Context, id Identity, a Attributes) (bool, string, error) {
	parts := append([]string{id.Username, id.UID, a.Verb, a.Group, a.Resource, a.Subresource, a.Name, a.Namespace}, id.Groups...)
	k, now := key(parts...), time.Now()
	if d, ok := s.cache.get(k, now); ok {
		s.Stats.CacheHits.Add(1)
		return d.allowed, d.reason, nil
	}
	s.Stats.Reviews.Add(1)
	sar, err := s.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: id.Username, UID: id.UID, Groups: id.Groups,
			ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: a.Verb, Group: a.Group, Resource: a.Resource, Subresource: a.Subresource, Name: a.Name, Namespace: a.Namespace,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.Stats.Unavailable.Add(1)
		return false, "", fmt.Errorf("SubjectAccessReview: %w", err)
	}
	d := decision{allowed: sar.Status.Allowed && !sar.Status.Denied}
	if !d.allowed {
		s.Stats.Rejected.Add(1)
		d.reason = fmt.Sprintf("%s may not %s", id.Username, a)
		if sar.Status.Reason != "" {
			d.reason += ": " + sar.Status.Reason
		}
	}
	ttl := s.allowTTL
	if !d.allowed {
		ttl = s.denyTTL
	}
	s.cache.put(k, d, ttl, now)
	return d.allowed, d.reason, nil
}

// Static allows exactly the listed usernames, whatever they ask: the local
// stand-in for RBAC under parry run, where the token file's identities are
// parry's own components.
type Static map[string][]Attributes

func (s Static) Authorize(_ context.Context, id Identity, a Attributes) (bool, string, error) {
	for _, allowed := range s[id.Username] {
		if allowed == a || (allowed.Name == "" && allowed.Verb == a.Verb && allowed.Group == a.Group &&
			allowed.Resource == a.Resource && allowed.Subresource == a.Subresource && allowed.Namespace == a.Namespace) {
			return true, "", nil
		}
	}
	return false, fmt.Sprintf("%s may not %s", id.Username, a), nil
}
