package respawn

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/step"
)

// Name is the step's name.
const Name = "respawn"

// reapInterval is how often the reaper looks for kept quarantined pods
// past their deleteAfter deadline.
const reapInterval = 30 * time.Second

// Definition declares the step and builds it. Building starts the reaper of
// kept quarantined pods under ctx (it reads the deadlines from the pods
// themselves, so it may run in every replica and restart at any time).
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(ctx context.Context, d step.Deps) (step.Action, error) {
		s := &respawner{kube: d.Kube, log: d.Log.With().Str("step", Name).Logger()}
		go s.reap(ctx, reapInterval)
		return s.act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Orphan the quarantined pod so its controller starts a clean replacement, wait for it to be Ready, delete the quarantined pod once its evidence is saved.",
		Params: []step.Param{
			{Name: "readyTimeout", Type: step.Duration, Default: "60s", Description: "how long to wait for the replacement to be Ready"},
			{Name: "barePods", Type: step.String, Enum: []string{"refuse", "recreate"}, Default: "refuse", Description: "a pod without a controller: refuse, or recreate it from its spec"},
			{Name: "deleteAfter", Type: step.Duration, Description: "delete a kept quarantined pod this long after it was orphaned even without a snapshot (unset: keep it until a respawn after snapshot.done)"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "patch", "create", "delete"}},
			// The ReplicaSet's selector; a StatefulSet pod is deleted by
			// name, its StatefulSet never read.
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets"}, Verbs: []string{"get"}},
		},
		Example: `- name: respawn
  function: respawn
  after: [snapshot]
  when: succeeded`,
		Target:   step.TargetPod,
		Playbook: true,
		DryRun:   true,
		// An attempt waits up to readyTimeout (60 s by default) for the
		// replacement.
		Delivery: step.Delivery{Retry: 6, Backoff: 500 * time.Millisecond, Timeout: 2 * time.Minute},
	}
}

type respawner struct {
	kube kubernetes.Interface
	log  zerolog.Logger
}

// Result is the reply's data.
type Result struct {
	Namespace   string    `json:"namespace"`
	Pod         string    `json:"pod"`
	Controller  string    `json:"controller,omitempty"`
	Orphaned    bool      `json:"orphaned,omitempty"`
	Replacement string    `json:"replacement,omitempty"`
	ReadyAt     time.Time `json:"readyAt,omitzero"`
	Deleted     bool      `json:"deleted"`
	DeleteNote  string    `json:"deleteNote,omitempty"`
	DryRun      bool      `json:"dryRun,omitempty"`
	Intended    any       `json:"intended,omitempty"`
}

// act respawns the pod an incident names.
func (s *respawner) act(ctx context.Context, r *step.Request) (any, error) {
	ns, name := r.Pod.Namespace, r.Pod.Name
	if s.kube == nil {
		return nil, step.Fail("skipped: no Kubernetes cluster (KUBECONFIG is unset): nothing to respawn")
	}
	e := r.Event
	cfg := r.Config
	evidenceSaved := e.Type() == events.StepDone("snapshot")
	res := Result{Namespace: ns, Pod: name, DryRun: r.DryRun}

	if r.Pod.Gone {
		res.DeleteNote = "the quarantined pod is already gone; its controller replaces it as usual"
		return res, nil
	}
	pod := r.Pod.Object
	owner := metav1.GetControllerOf(pod)
	if pod.Annotations[labels.OrphanedFrom] != "" {
		// A redelivery or a second respawn step: orphaned before.
		res.Controller, res.Orphaned = pod.Annotations[labels.OrphanedFrom], true
		owner = nil
	}
	switch {
	case owner != nil && owner.Kind == "ReplicaSet":
		res.Controller = "ReplicaSet/" + owner.Name
		return s.orphan(ctx, r, pod, owner.Name, cfg, evidenceSaved, res)
	case owner != nil && owner.Kind == "StatefulSet":
		res.Controller = "StatefulSet/" + owner.Name
		if !evidenceSaved {
			return nil, step.Fail("a StatefulSet pod comes back under the same name, so it can only be replaced by deleting it, and its evidence is not saved yet: chain respawn after snapshot")
		}
		return s.deleteAndWait(ctx, r, pod, cfg, res)
	case owner != nil:
		return nil, step.Fail("pods owned by a %s are not respawned (only ReplicaSet and StatefulSet pods)", owner.Kind)
	case res.Orphaned:
		return s.finish(ctx, r, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
	case cfg.Params.String("barePods") == "recreate":
		return s.recreate(ctx, r, pod, cfg, evidenceSaved, res)
	default:
		return nil, step.Fail("a bare pod has no controller to replace it; set barePods: recreate to recreate it from its spec")
	}
}

// orphan moves the labels the ReplicaSet selects on into an annotation and
// drops the owner reference: the ReplicaSet no longer counts the pod and
// starts a replacement; the pod keeps running, quarantined, for evidence.
func (s *respawner) orphan(ctx context.Context, r *step.Request, pod *corev1.Pod, rsName string, cfg step.StepConfig, evidenceSaved bool, res Result) (any, error) {
	rs, err := s.kube.AppsV1().ReplicaSets(pod.Namespace).Get(ctx, rsName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading ReplicaSet %s/%s: %w", pod.Namespace, rsName, err)
	}
	selector, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil {
		return nil, step.Fail("ReplicaSet %s has an invalid selector: %v", rsName, err)
	}
	moved := map[string]string{}
	patchLabels := map[string]any{}
	for _, req := range rs.Spec.Selector.MatchExpressions {
		if v, ok := pod.Labels[req.Key]; ok {
			moved[req.Key], patchLabels[req.Key] = v, nil
		}
	}
	for k := range rs.Spec.Selector.MatchLabels {
		if v, ok := pod.Labels[k]; ok {
			moved[k], patchLabels[k] = v, nil
		}
	}
	remaining := k8slabels.Set{}
	for k, v := range pod.Labels {
		if _, gone := moved[k]; !gone {
			remaining[k] = v
		}
	}
	if selector.Matches(remaining) {
		return nil, step.Fail("ReplicaSet %s would still select the pod without its selector labels (NotIn/DoesNotExist expressions); not orphaning", rsName)
	}
	// The replacement is a pod the selector matches that did not exist
	// before the orphaning: a sibling being Ready proves nothing.
	before, err := s.kube.CoreV1().Pods(pod.Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return nil, fmt.Errorf("listing the pods of ReplicaSet %s/%s: %w", pod.Namespace, rsName, err)
	}
	existing := map[types.UID]bool{}
	for _, p := range before.Items {
		existing[p.UID] = true
	}
	original, _ := json.Marshal(moved)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":          patchLabels,
		"annotations":     map[string]string{labels.OriginalLabels: string(original), labels.OrphanedFrom: "ReplicaSet/" + rsName},
		"ownerReferences": []any{},
	}})
	if r.DryRun {
		res.Intended = map[string]any{"patch": "pods/" + pod.Namespace + "/" + pod.Name, "mergePatch": json.RawMessage(patch)}
		return res, nil
	}
	if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-respawn"}); err != nil {
		if apierrors.IsForbidden(err) {
			return nil, step.Fail("RBAC: %v", err)
		}
		return nil, fmt.Errorf("orphaning pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Orphaned = true
	replacement, at, err := s.waitReady(ctx, pod.Namespace, selector, existing, cfg.Params.Duration("readyTimeout"))
	if err != nil {
		return nil, step.Fail("%v; the quarantined pod is kept", err)
	}
	res.Replacement, res.ReadyAt = replacement, at
	return s.finish(ctx, r, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
}

// finish deletes the quarantined pod once its evidence is saved: only a pod
// that carries this incident's quarantine label (which only isolate sets),
// and only after snapshot replied done for this incident (the event's seal
// proves classify opened the incident for this pod).
func (s *respawner) finish(ctx context.Context, r *step.Request, pod *corev1.Pod, evidenceSaved bool, ttl time.Duration, res Result) (any, error) {
	if !evidenceSaved {
		res.DeleteNote = "kept: the quarantined pod is deleted by a respawn step chained after snapshot.done"
		if ttl > 0 {
			at := time.Now().Add(ttl).UTC().Format(time.RFC3339)
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{labels.DeleteAfter: at}}})
			if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-respawn"}); err != nil {
				return nil, fmt.Errorf("setting the deletion deadline of %s/%s: %w", pod.Namespace, pod.Name, err)
			}
			res.DeleteNote = "kept until " + at + " (deleteAfter), or until a respawn after snapshot.done"
		}
		return res, nil
	}
	// The label is read fresh, not from the runtime's watch: isolate may
	// have set it a moment ago, and a delete must not rest on a stale copy.
	fresh, err := s.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) || (err == nil && fresh.UID != pod.UID):
		res.Deleted, res.DeleteNote = true, "the quarantined pod is already gone"
		return res, nil
	case err != nil:
		return nil, fmt.Errorf("reading pod %s/%s before deleting it: %w", pod.Namespace, pod.Name, err)
	}
	switch q := fresh.Labels[labels.Quarantine]; q {
	case labels.Value(r.Incident):
	case "":
		// isolate of the same incident may still be retrying its label.
		return nil, fmt.Errorf("pod %s/%s does not carry incident %s's quarantine yet (label %s): respawn deletes only a pod isolate quarantined for the incident; retried", pod.Namespace, pod.Name, r.Incident, labels.Quarantine)
	default:
		return nil, step.Fail("refused: pod %s/%s carries the quarantine of another incident (%s=%q), not of %s: respawn deletes only the pod isolate quarantined for the incident", pod.Namespace, pod.Name, labels.Quarantine, q, r.Incident)
	}
	if err := s.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		if apierrors.IsForbidden(err) {
			return nil, step.Fail("RBAC: %v", err)
		}
		return nil, fmt.Errorf("deleting quarantined pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Deleted = true
	return res, nil
}

func (s *respawner) deleteAndWait(ctx context.Context, r *step.Request, pod *corev1.Pod, cfg step.StepConfig, res Result) (any, error) {
	if r.DryRun {
		res.Intended = map[string]string{"delete": "pods/" + pod.Namespace + "/" + pod.Name}
		return res, nil
	}
	if _, err := s.finish(ctx, r, pod, true, 0, res); err != nil {
		return nil, err
	}
	res.Deleted = true
	deadline := time.Now().Add(cfg.Params.Duration("readyTimeout"))
	for ; time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		p, err := s.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.UID != pod.UID && isReady(p) {
			res.Replacement, res.ReadyAt = p.Name, time.Now()
			return res, nil
		}
	}
	return nil, step.Fail("StatefulSet pod %s was deleted but not Ready again within %s", pod.Name, cfg.Params.Duration("readyTimeout"))
}

func (s *respawner) recreate(ctx context.Context, r *step.Request, pod *corev1.Pod, cfg step.StepConfig, evidenceSaved bool, res Result) (any, error) {
	clean := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + "-", Namespace: pod.Namespace, Labels: map[string]string{}, Annotations: map[string]string{labels.OrphanedFrom: "recreated-from/" + pod.Name}},
		Spec:       *pod.Spec.DeepCopy(),
	}
	for k, v := range pod.Labels {
		if k != labels.Quarantine {
			clean.Labels[k] = v
		}
	}
	clean.Spec.NodeName = ""
	if r.DryRun {
		res.Intended = clean
		return res, nil
	}
	created, err := s.kube.CoreV1().Pods(pod.Namespace).Create(ctx, clean, metav1.CreateOptions{FieldManager: "parry-respawn"})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, step.Fail("RBAC: %v", err)
		}
		return nil, fmt.Errorf("recreating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Controller = "none (bare pod, recreated)"
	deadline := time.Now().Add(cfg.Params.Duration("readyTimeout"))
	for ; time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		p, err := s.kube.CoreV1().Pods(pod.Namespace).Get(ctx, created.Name, metav1.GetOptions{})
		if err == nil && isReady(p) {
			res.Replacement, res.ReadyAt = p.Name, time.Now()
			return s.finish(ctx, r, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
		}
	}
	return nil, step.Fail("recreated pod %s not Ready within %s; the quarantined pod is kept", created.Name, cfg.Params.Duration("readyTimeout"))
}

// reap deletes kept quarantined pods whose deleteAfter deadline has passed,
// every interval until ctx is done. It reads the deadlines from the pods
// themselves, so it may run anywhere and restart at any time.
func (s *respawner) reap(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.reapOnce(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *respawner) reapOnce(ctx context.Context, now time.Time) {
	if s.kube == nil {
		return
	}
	pods, err := s.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: labels.Quarantine})
	if err != nil {
		s.log.Warn().Err(err).Msg("listing quarantined pods to reap")
		return
	}
	for _, p := range pods.Items {
		deadline, err := time.Parse(time.RFC3339, p.Annotations[labels.DeleteAfter])
		if err != nil || now.Before(deadline) || p.DeletionTimestamp != nil {
			continue
		}
		err = s.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			s.log.Warn().Err(err).Str("pod", p.Namespace+"/"+p.Name).Msg("deleting a quarantined pod past its deadline")
			continue
		}
		s.log.Info().Str("pod", p.Namespace+"/"+p.Name).Msg("deleted a quarantined pod past its deleteAfter deadline")
	}
}

// waitReady polls (every 25 ms: this is on the kernel→replacement latency
// path) for a Ready pod the selector matches that is not one of existing.
func (s *respawner) waitReady(ctx context.Context, ns string, selector k8slabels.Selector, existing map[types.UID]bool, timeout time.Duration) (string, time.Time, error) {
	deadline := time.Now().Add(timeout)
	for ; time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		pods, err := s.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
		if err != nil {
			continue
		}
		var newest *corev1.Pod
		for i := range pods.Items {
			p := &pods.Items[i]
			if !existing[p.UID] && p.DeletionTimestamp == nil && isReady(p) && (newest == nil || p.CreationTimestamp.After(newest.CreationTimestamp.Time)) {
				newest = p
			}
		}
		if newest != nil {
			return newest.Name, time.Now(), nil
		}
		if ctx.Err() != nil {
			return "", time.Time{}, ctx.Err()
		}
	}
	return "", time.Time{}, fmt.Errorf("no replacement became Ready within %s", timeout)
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Applied says what respawn changed, for the trace.
func (r Result) Applied() []string {
	if r.DryRun {
		return nil
	}
	var out []string
	if r.Orphaned {
		out = append(out, fmt.Sprintf("pod %s/%s orphaned from %s", r.Namespace, r.Pod, r.Controller))
	}
	if r.Replacement != "" {
		out = append(out, fmt.Sprintf("replacement %s/%s Ready at %s", r.Namespace, r.Replacement, r.ReadyAt.UTC().Format(time.RFC3339Nano)))
	}
	if r.Deleted {
		out = append(out, fmt.Sprintf("quarantined pod %s/%s deleted", r.Namespace, r.Pod))
	}
	return out
}
