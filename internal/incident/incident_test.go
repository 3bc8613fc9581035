package incident_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/incident"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

func suffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// applyCloserManifest creates config/610-incident-closer.yaml as shipped
// (and its namespace); objects a previous test created are kept.
func applyCloserManifest(t *testing.T, ctx context.Context, kube kubernetes.Interface) {
	t.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: playbook.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../" + incident.CloserManifest)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, doc := range strings.Split(string(b), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", incident.CloserManifest, err)
		}
		n++
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = kube.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = kube.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = kube.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = kube.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: unexpected %T", incident.CloserManifest, runtime.Object(o))
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if n != 4 {
		t.Fatalf("%s has %d objects, want the ServiceAccount, ClusterRole, ClusterRoleBinding and token Role", incident.CloserManifest, n)
	}
}

// Who may close is who may create the closer's tokens: a person without
// the Role of config/610 is told to ask for it; bound to it, the same
// person gets a token the API server authenticates as
// parry-incident-closer for the sensors' audience, which the shipped
// ClusterRole lets unblock, and is recorded by their own name.
func TestCloserTokenInCluster(t *testing.T) {
	env := devenv.Require(t)
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	applyCloserManifest(t, ctx, admin)
	person := "oncall-" + suffix()
	cfg := rest.CopyConfig(env.RESTConfig())
	cfg.Impersonate = rest.ImpersonationConfig{UserName: person}
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	_, err = incident.CloserToken(ctx, as, api.Audience)
	if !apierrors.IsForbidden(err) {
		t.Fatalf("a person without the Role got a token: %v", err)
	}
	for _, w := range []string{"parry-incident-closer-token", incident.CloserManifest, "parry-system/parry-incident-closer"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the refusal does not name %q: %v", w, err)
		}
	}

	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: person, Namespace: playbook.Namespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "parry-incident-closer-token"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: person}}}
	if _, err := admin.RbacV1().RoleBindings(playbook.Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.RbacV1().RoleBindings(playbook.Namespace).Delete(context.Background(), person, metav1.DeleteOptions{})
	})
	var tok string
	deadline := time.Now().Add(10 * time.Second) // the authorizer's cache of RBAC
	for tok, err = incident.CloserToken(ctx, as, api.Audience); err != nil && time.Now().Before(deadline); tok, err = incident.CloserToken(ctx, as, api.Audience) {
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("bound to the Role: %v", err)
	}
	id, err := auth.NewTokenReview(admin, api.Audience, time.Minute).Authenticate(ctx, tok)
	if err != nil || id.Username != auth.ServiceAccountUser(playbook.Namespace, playbook.IncidentCloserServiceAccount) {
		t.Fatalf("the token authenticates as %q (%v), want the closer's ServiceAccount", id.Username, err)
	}
	if _, err := auth.NewTokenReview(admin, "eventing.knative.dev/broker/parry-system/parry", time.Minute).Authenticate(ctx, tok); err == nil {
		t.Error("the sensors' token is accepted for the Broker's audience")
	}
	sar, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: id.Username, Groups: id.Groups,
		ResourceAttributes: &authzv1.ResourceAttributes{Group: api.Group, Resource: api.Resource, Subresource: api.SubresourceUnblock, Verb: api.VerbOf(api.SubresourceUnblock), Name: env.NodeName},
	}}, metav1.CreateOptions{})
	if err != nil || !sar.Status.Allowed {
		t.Errorf("the closer may not unblock on %s: %+v %v", env.NodeName, sar.Status, err)
	}
	who, err := incident.WhoAmI(ctx, as)
	if err != nil || who != person {
		t.Errorf("WhoAmI = %q, %v, want %q", who, err, person)
	}
}

// An incident's pods in a cluster are those quarantined for it: the label
// value and the annotation, which decides when label values collide.
func TestFromCluster(t *testing.T) {
	env := devenv.Require(t)
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns := "close-" + suffix()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	// The controller-manager makes it too, but maybe not before the pods.
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	inc := "inc-" + suffix()
	pod := func(name, annotation string) *corev1.Pod {
		p, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labels.Quarantine: labels.Value(inc)},
				Annotations: map[string]string{labels.Incident: annotation}},
			Spec: corev1.PodSpec{NodeName: env.NodeName, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	victim := pod("victim", inc)
	pod("collides", inc+"-other")
	pods, err := incident.FromCluster(ctx, admin, inc)
	if err != nil || len(pods) != 1 || pods[0].UID != string(victim.UID) || pods[0].Node != env.NodeName || pods[0].Namespace != ns || pods[0].Name != "victim" {
		t.Fatalf("FromCluster = %+v, %v, want only %s on %s", pods, err, victim.UID, env.NodeName)
	}
	_, err = incident.FromCluster(ctx, admin, "inc-none-"+suffix())
	if !errors.Is(err, incident.ErrUnknown) || !strings.Contains(err.Error(), labels.Quarantine) {
		t.Errorf("an unknown incident: %v", err)
	}
}
