package admission_test

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/tests/devenv"
)

// respawnAccount makes a namespace with respawn's ServiceAccount bound to
// exactly the rules respawn's Spec declares, and returns an admin client,
// a client impersonating that account, and the namespace.
func respawnAccount(t *testing.T) (admin, sa kubernetes.Interface, ns string) {
	t.Helper()
	env := devenv.Require(t)
	ctx := t.Context()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	nsObj, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "admission-respawn-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns = nsObj.Name
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "parry-respawn"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := "parry-respawn-" + ns
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: respawn.Definition().Spec.ClusterRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.RbacV1().ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{}) })
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "parry-respawn"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "parry-respawn", Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := env.RESTConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":parry-respawn", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	sa, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return admin, sa, ns
}

// testPod is a pod of ns with the given labels and annotations.
func testPod(name string, lbls, annotations map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: lbls, Annotations: annotations},
		Spec: corev1.PodSpec{ServiceAccountName: "parry-respawn", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}}}
	if name[len(name)-1] == '-' {
		p.GenerateName = name
	} else {
		p.Name = name
	}
	return p
}

// respawn's ServiceAccount may create and delete any pod as far as RBAC
// goes. With the policy of config/ applied, the API server lets it delete
// a quarantined pod and create a recreated bare pod, as respawn does, and
// refuses deleting a pod that is not quarantined and creating any other
// pod.
func TestRespawnDeletesOnlyQuarantinedCreatesOnlyRecreated(t *testing.T) {
	admin, sa, ns := respawnAccount(t)
	ctx := t.Context()
	mk := func(p *corev1.Pod) *corev1.Pod {
		t.Helper()
		got, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// as respawn deletes: by name, with the UID as precondition
	del := func(p *corev1.Pod) error {
		return sa.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
	}
	create := func(p *corev1.Pod) error {
		_, err := sa.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{FieldManager: "parry-respawn"})
		return err
	}
	waitAllowed(t, sa, ns, "delete")
	waitAllowed(t, sa, ns, "create")
	if err := del(mk(testPod("rbac-alone", map[string]string{"app": "web"}, nil))); err != nil {
		t.Fatalf("without the policy, respawn's rules should allow deleting any pod: %v", err)
	}
	if err := create(testPod("rbac-alone-", map[string]string{"app": "web"}, nil)); err != nil {
		t.Fatalf("without the policy, respawn's rules should allow creating any pod: %v", err)
	}
	applyPolicy(t, admin, "521-respawn-create-delete-admission.yaml", "parry-respawn", ns)
	waitDenied(t, "delete only a quarantined pod", func(i int) error {
		return del(mk(testPod(fmt.Sprintf("plain-%d", i), map[string]string{"app": "web"}, nil)))
	})

	// deleting
	if err := del(mk(testPod("plain", map[string]string{"app": "web"}, map[string]string{labels.OrphanedFrom: "ReplicaSet/web-1"}))); !denied(err, "delete only a quarantined pod") {
		t.Errorf("respawn deleting an orphaned pod without the quarantine label: got %v, want denied", err)
	}
	if err := del(mk(testPod("quarantined", map[string]string{"app": "web", labels.Quarantine: "inc-1"}, nil))); err != nil {
		t.Errorf("respawn deleting a quarantined pod refused: %v", err)
	}

	// creating
	recreated := map[string]string{labels.OrphanedFrom: "recreated-from/web"}
	for _, c := range []struct {
		name string
		pod  *corev1.Pod
	}{
		{"a plain pod", testPod("plain-", map[string]string{"app": "web"}, nil)},
		{"a pod orphaned from a ReplicaSet", testPod("rs-", map[string]string{"app": "web"}, map[string]string{labels.OrphanedFrom: "ReplicaSet/web-1"})},
		{"a recreated pod with the quarantine label", testPod("web-", map[string]string{"app": "web", labels.Quarantine: "inc-1"}, recreated)},
	} {
		if err := create(c.pod); !denied(err, "create only a recreated pod") {
			t.Errorf("respawn creating %s: got %v, want denied by the policy", c.name, err)
		}
	}
	// what respawn's recreate creates: GenerateName, the labels but the
	// quarantine, the annotation
	if err := create(testPod("web-", map[string]string{"app": "web"}, recreated)); err != nil {
		t.Errorf("respawn creating a recreated pod refused: %v", err)
	}
}
