package admission_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"parry.dev/parry/internal/labels"
)

// respawn's ServiceAccount, with exactly the rules respawn's Spec declares,
// may add any label to any pod as far as RBAC goes. With the policy of
// config/ applied, the API server lets it orphan a pod as respawn does
// (remove the selector label and the owner, set parry's annotations) and
// refuses adding or changing a label, an owner, another annotation or the
// spec.
func TestRespawnMayOnlyOrphan(t *testing.T) {
	admin, sa, ns := respawnAccount(t)
	ctx := t.Context()
	// An owner that exists, so the garbage collector keeps the pod.
	owner, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web", "tier": "front"}, Annotations: map[string]string{"team": "payments"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID}}},
		Spec: corev1.PodSpec{ServiceAccountName: "parry-respawn", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := func(pt types.PatchType, body string) error {
		_, err := sa.CoreV1().Pods(ns).Patch(ctx, pod.Name, pt, []byte(body), metav1.PatchOptions{FieldManager: "parry-respawn"})
		return err
	}
	waitAllowed(t, sa, ns, "patch")
	if err := patch(types.MergePatchType, `{"metadata":{"labels":{"rbac":"alone"}}}`); err != nil {
		t.Fatalf("without the policy, respawn's rules should allow any label patch: %v", err)
	}
	applyPolicy(t, admin, "520-respawn-admission.yaml", "parry-respawn", ns)
	waitDenied(t, "only remove labels", func(i int) error {
		return patch(types.MergePatchType, fmt.Sprintf(`{"metadata":{"labels":{"rbac":"policy-%d"}}}`, i))
	})

	for _, c := range []struct {
		name, why string
		pt        types.PatchType
		body      string
	}{
		{"a new label", "only remove labels", types.MergePatchType, `{"metadata":{"labels":{"evil":"x"}}}`},
		{"a label's value", "only remove labels", types.MergePatchType, `{"metadata":{"labels":{"tier":"back"}}}`},
		{"the quarantine label", "only remove labels", types.MergePatchType, fmt.Sprintf(`{"metadata":{"labels":{%q:"x"}}}`, labels.Quarantine)},
		{"another annotation", "annotations", types.MergePatchType, `{"metadata":{"annotations":{"team":"evil"}}}`},
		{"the image", "spec", types.StrategicMergePatchType, `{"spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:evil"}]}}`},
		{"a finalizer", "finalizers", types.MergePatchType, `{"metadata":{"finalizers":["evil.example/keep"]}}`},
		{"another owner", "owners", types.JSONPatchType, `[{"op":"add","path":"/metadata/ownerReferences/-","value":{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"00000000-0000-0000-0000-000000000001"}}]`},
	} {
		if err := patch(c.pt, c.body); !denied(err, c.why) {
			t.Errorf("respawn patching %s: got %v, want denied by the policy (%q)", c.name, err, c.why)
		}
	}

	// What respawn patches when it orphans a pod, then its deletion deadline.
	original, _ := json.Marshal(map[string]string{"app": "web"})
	orphan, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":          map[string]any{"app": nil},
		"annotations":     map[string]string{labels.OriginalLabels: string(original), labels.OrphanedFrom: "ReplicaSet/web-1"},
		"ownerReferences": []any{},
	}})
	if err := patch(types.MergePatchType, string(orphan)); err != nil {
		t.Fatalf("respawn's orphaning refused: %v", err)
	}
	deadline, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{labels.DeleteAfter: time.Now().UTC().Format(time.RFC3339)}}})
	if err := patch(types.MergePatchType, string(deadline)); err != nil {
		t.Fatalf("respawn's deletion deadline refused: %v", err)
	}
	got, err := admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["app"] != "" || len(got.OwnerReferences) != 0 || got.Labels["tier"] != "front" || got.Annotations["team"] != "payments" || got.Annotations[labels.DeleteAfter] == "" {
		t.Fatalf("pod after the orphaning: labels %v annotations %v owners %v", got.Labels, got.Annotations, got.OwnerReferences)
	}
}
