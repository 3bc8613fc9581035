package devenv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/tests/devenv"
)

// client returns a clientset for the shared environment and a fresh
// namespace whose default service account exists (pods need it).
func client(t *testing.T) (*kubernetes.Clientset, string) {
	t.Helper()
	env := devenv.Require(t)
	cs, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "devenv-test-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	eventually(t, 30*time.Second, "default service account in "+ns.Name, func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	return cs, ns.Name
}

// eventually polls f until it returns nil or fails the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func runningPods(ctx context.Context, cs *kubernetes.Clientset, ns, selector, node string) ([]corev1.Pod, error) {
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var running []corev1.Pod
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			running = append(running, p)
		}
	}
	return running, nil
}

// A Deployment's pods run on the kwok node, and a pod relabelled out of its
// ReplicaSet's selector is orphaned and replaced: the real controller-manager,
// scheduler and kwok at work.
func TestDeploymentRunsAndOrphanedPodIsReplaced(t *testing.T) {
	cs, ns := client(t)
	env := devenv.Require(t)
	ctx := t.Context()
	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "registry.k8s.io/pause:3.10",
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	eventually(t, 60*time.Second, "2 Running pods on "+env.NodeName, func() error {
		pods, err = runningPods(ctx, cs, ns, "app=web", env.NodeName)
		if err == nil && len(pods) != 2 {
			err = fmt.Errorf("%d Running", len(pods))
		}
		return err
	})

	victim := pods[0]
	patch := []byte(`{"metadata":{"labels":{"app":"quarantined"}}}`)
	if _, err := cs.CoreV1().Pods(ns).Patch(ctx, victim.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "a replacement Running pod", func() error {
		pods, err := runningPods(ctx, cs, ns, "app=web", env.NodeName)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if p.Name == victim.Name {
				return fmt.Errorf("relabelled pod %s still selected", victim.Name)
			}
		}
		if len(pods) != 2 {
			return fmt.Errorf("%d Running pods match app=web", len(pods))
		}
		return nil
	})
	// The relabelled pod is kept (evidence), released by its ReplicaSet.
	eventually(t, 30*time.Second, "relabelled pod orphaned", func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ref := metav1.GetControllerOf(p); ref != nil {
			return fmt.Errorf("still controlled by %s/%s", ref.Kind, ref.Name)
		}
		return nil
	})
}

func TestNetworkPolicyIsStored(t *testing.T) {
	cs, ns := client(t)
	ctx := t.Context()
	port := intstr.FromInt32(53)
	want := networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"parry.dev/quarantine": "true"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		Egress: []networkingv1.NetworkPolicyEgressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
		}},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "quarantine"}, Spec: want,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "quarantine", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The API server defaults the port's protocol to TCP.
	tcp := corev1.ProtocolTCP
	want.Egress[0].Ports[0].Protocol = &tcp
	if !equality.Semantic.DeepEqual(got.Spec, want) {
		t.Fatalf("stored spec differs:\n got %+v\nwant %+v", got.Spec, want)
	}
}

// RBAC answers for a restricted service account: the granted verb is
// allowed, others are denied.
func TestSubjectAccessReviewFollowsRBAC(t *testing.T) {
	cs, ns := client(t)
	ctx := t.Context()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "restricted"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "restricted-reads-pods"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "restricted", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	user := "system:serviceaccount:" + ns + ":restricted"
	review := func(verb, resource string) *authorizationv1.SubjectAccessReview {
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: ns, Verb: verb, Resource: resource,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return sar
	}
	// The RBAC authorizer reads roles and bindings from an informer
	// cache: a new binding takes effect within moments, not at once. The
	// granted verbs are asked first, until allowed, so the denials after
	// them are answered with the binding in place.
	for _, c := range []struct {
		verb, resource string
		allowed        bool
	}{
		{"get", "pods", true},
		{"list", "pods", true},
		{"delete", "pods", false},
		{"get", "secrets", false},
	} {
		sar := review(c.verb, c.resource)
		for deadline := time.Now().Add(5 * time.Second); c.allowed && !sar.Status.Allowed && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			sar = review(c.verb, c.resource)
		}
		if sar.Status.Allowed != c.allowed {
			t.Errorf("%s %s %s: allowed=%v (%q), want %v", user, c.verb, c.resource, sar.Status.Allowed, sar.Status.Reason, c.allowed)
		}
	}
}

// A bound service-account token verifies with the published key and issuer,
// which is what Vault's jwt auth (jwt_validation_pubkeys) will rely on.
func TestServiceAccountTokenVerifiesWithPublishedKey(t *testing.T) {
	cs, ns := client(t)
	env := devenv.Require(t)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), "default", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"vault"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tr.Status.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	block, _ := pem.Decode([]byte(env.ServiceAccountPublicKeyPEM))
	if block == nil {
		t.Fatal("ServiceAccountPublicKeyPEM is not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature expected, got %d bytes (%v)", len(sig), err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	ecPub, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("ServiceAccountPublicKeyPEM holds a %T, want an ECDSA key", pub)
	}
	if !ecdsa.Verify(ecPub, digest[:], r, s) {
		t.Fatal("token signature does not verify with ServiceAccountPublicKeyPEM")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.Iss != env.ServiceAccountIssuer || claims.Sub != "system:serviceaccount:"+ns+":default" {
		t.Fatalf("claims iss=%q sub=%q, want iss=%q", claims.Iss, claims.Sub, env.ServiceAccountIssuer)
	}
}
