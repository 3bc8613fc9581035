package admission_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// loadPolicy reads a file of config/ that holds one policy and its binding.
func loadPolicy(t *testing.T, policyFile string) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "config", policyFile))
	if err != nil {
		t.Fatal(err)
	}
	var policy *admissionv1.ValidatingAdmissionPolicy
	var binding *admissionv1.ValidatingAdmissionPolicyBinding
	for doc := range bytes.SplitSeq(data, []byte("\n---\n")) {
		var head metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatal(err)
		}
		switch head.Kind {
		case "ValidatingAdmissionPolicy":
			policy = &admissionv1.ValidatingAdmissionPolicy{}
			err = yaml.UnmarshalStrict(doc, policy)
		case "ValidatingAdmissionPolicyBinding":
			binding = &admissionv1.ValidatingAdmissionPolicyBinding{}
			err = yaml.UnmarshalStrict(doc, binding)
		default:
			t.Fatalf("config/%s holds a %q", policyFile, head.Kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if policy == nil || binding == nil || binding.Spec.PolicyName != policy.Name {
		t.Fatalf("config/%s: want a policy and its binding", policyFile)
	}
	return policy, binding
}

// isolate's ServiceAccount, with exactly the rules isolate's Spec declares,
// may patch any label of any pod as far as RBAC goes. With the policy of
// config/ applied (its user and binding moved to a test namespace), the API
// server lets it set the quarantine label and parry's annotations, as
// isolate does, and refuses any other label, annotation, spec, owner or
// finalizer change; other users are not affected.
func TestIsolateMayPatchOnlyTheQuarantine(t *testing.T) {
	env := devenv.Require(t)
	ctx := t.Context()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	nsObj, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "admission-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := nsObj.Name
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	// isolate's ServiceAccount and its declared rules, bound in ns.
	user := "system:serviceaccount:" + ns + ":parry-isolate"
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "parry-isolate"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := "parry-isolate-" + ns
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: isolate.Definition().Spec.ClusterRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.RbacV1().ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{}) })
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "parry-isolate"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "parry-isolate", Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := env.RESTConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"team": "payments"}},
		Spec: corev1.PodSpec{ServiceAccountName: "parry-isolate", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := func(c kubernetes.Interface, pt types.PatchType, body string) error {
		_, err := c.CoreV1().Pods(ns).Patch(ctx, pod.Name, pt, []byte(body), metav1.PatchOptions{FieldManager: "parry-isolate"})
		return err
	}
	merge := func(body string) error { return patch(sa, types.MergePatchType, body) }

	waitAllowed(t, sa, ns, "patch")
	// RBAC alone: the SA may rewrite the workload's selector label.
	if err := merge(`{"metadata":{"labels":{"app":"rbac-alone"}}}`); err != nil {
		t.Fatalf("without the policy, isolate's rules should allow any label patch: %v", err)
	}

	applyPolicy(t, admin, "510-isolate-admission.yaml", "parry-isolate", ns)

	// The policy takes effect once the API server has compiled it.
	waitDenied(t, "parry.dev/quarantine", func(i int) error { return merge(fmt.Sprintf(`{"metadata":{"labels":{"app":"web-%d"}}}`, i)) })

	// What isolate patches.
	quarantine := fmt.Sprintf(`{"metadata":{"labels":{%q:"inc-1"},"annotations":{%q:"inc-1",%q:%q}}}`,
		labels.Quarantine, labels.Incident, labels.QuarantinedAt, time.Now().UTC().Format(time.RFC3339Nano))
	if err := merge(quarantine); err != nil {
		t.Fatalf("isolate's own patch refused: %v", err)
	}
	got, err := admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels[labels.Quarantine] != "inc-1" || got.Annotations[labels.Incident] != "inc-1" {
		t.Fatalf("quarantine not applied: labels %v annotations %v", got.Labels, got.Annotations)
	}
	if err := merge(fmt.Sprintf(`{"metadata":{"labels":{%q:"inc-2"}}}`, labels.Quarantine)); err != nil {
		t.Fatalf("relabelling the quarantine refused: %v", err)
	}

	for _, c := range []struct {
		name, why string
		pt        types.PatchType
		body      string
	}{
		{"another label", "parry.dev/quarantine", types.MergePatchType, `{"metadata":{"labels":{"app":"evil"}}}`},
		{"a new label", "parry.dev/quarantine", types.MergePatchType, `{"metadata":{"labels":{"tier":"evil"}}}`},
		{"a removed label", "parry.dev/quarantine", types.MergePatchType, `{"metadata":{"labels":{"app":null}}}`},
		{"another annotation", "parry.dev/incident", types.MergePatchType, `{"metadata":{"annotations":{"team":"evil"}}}`},
		{"a new annotation", "parry.dev/incident", types.MergePatchType, `{"metadata":{"annotations":{"evil":"x"}}}`},
		{"the image", "spec", types.StrategicMergePatchType, `{"spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:evil"}]}}`},
		{"a toleration", "spec", types.JSONPatchType, `[{"op":"add","path":"/spec/tolerations/-","value":{"key":"evil","operator":"Exists"}}]`},
		{"a finalizer", "finalizers", types.MergePatchType, `{"metadata":{"finalizers":["evil.example/keep"]}}`},
		{"an owner", "owners", types.MergePatchType, `{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"00000000-0000-0000-0000-000000000001"}]}}`},
		{"a label beside the quarantine", "parry.dev/quarantine", types.MergePatchType, fmt.Sprintf(`{"metadata":{"labels":{%q:"inc-3","app":"evil"}}}`, labels.Quarantine)},
	} {
		if err := patch(sa, c.pt, c.body); !denied(err, c.why) {
			t.Errorf("isolate patching %s: got %v, want denied by the policy (%q)", c.name, err, c.why)
		}
	}
	got, err = admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Containers[0].Image != "registry.k8s.io/pause:3.10" || got.Labels["tier"] != "" || got.Annotations["team"] != "payments" || got.Labels[labels.Quarantine] != "inc-2" {
		t.Errorf("pod changed by denied patches: labels %v annotations %v image %s", got.Labels, got.Annotations, got.Spec.Containers[0].Image)
	}
	// RBAC still refuses what isolate was never granted.
	if err := sa.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("isolate deleting a pod: %v, want forbidden", err)
	}
	// Other users are not held to it.
	if err := patch(admin, types.MergePatchType, `{"metadata":{"labels":{"app":"admin"}}}`); err != nil {
		t.Errorf("an administrator's label patch refused: %v", err)
	}
}

func denied(err error, why string) bool {
	return err != nil && strings.Contains(err.Error(), "denied request") && strings.Contains(err.Error(), why)
}

// waitDenied retries try (with a new i each time, so that an attempt let
// through before the policy is active changes something) until the policy
// denies it.
func waitDenied(t *testing.T, why string, try func(i int) error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		err := try(i)
		if denied(err, why) {
			return
		}
		if err != nil {
			t.Fatalf("waiting for the policy: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the policy did not take effect in 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// applyPolicy creates the policy and binding of config/<file>, matching the
// ServiceAccount sa of ns instead of parry-system's and bound to ns only.
func applyPolicy(t *testing.T, admin kubernetes.Interface, file, sa, ns string) {
	t.Helper()
	ctx := t.Context()
	policy, binding := loadPolicy(t, file)
	want, user := "system:serviceaccount:parry-system:"+sa, "system:serviceaccount:"+ns+":"+sa
	found := false
	for i, c := range policy.Spec.MatchConditions {
		if strings.Contains(c.Expression, "'"+want+"'") {
			policy.Spec.MatchConditions[i].Expression = strings.ReplaceAll(c.Expression, want, user)
			found = true
		}
	}
	if !found {
		t.Fatalf("config/%s matches no request by %s", file, want)
	}
	policy.Name += "-" + ns
	binding.Name += "-" + ns
	binding.Spec.PolicyName = policy.Name
	if binding.Spec.MatchResources != nil {
		t.Fatalf("config/%s: the binding should apply everywhere, it selects %+v", file, binding.Spec.MatchResources)
	}
	binding.Spec.MatchResources = &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	})
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})
}

// waitAllowed waits until c may verb pods in ns: the API server's RBAC
// authorizer reads bindings from an informer cache, so a binding created a
// moment ago may not apply yet.
func waitAllowed(t *testing.T, c kubernetes.Interface, ns, verb string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(), &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Resource: "pods", Namespace: ns}}}, metav1.CreateOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case r.Status.Allowed:
			return
		default:
			last = "denied: " + r.Status.Reason
		}
	}
	t.Fatalf("%s pods in %s not allowed within 10 s (%s): the binding did not take effect", verb, ns, last)
}
