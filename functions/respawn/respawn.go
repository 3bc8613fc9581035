package respawn

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/guard"
)

// Name is the step's name.
const Name = "respawn"

// Annotations respawn writes on the orphaned pod.
const (
	OriginalLabelsAnnot = "parry.dev/original-labels"
	OrphanedFromAnnot   = "parry.dev/orphaned-from"
	// DeleteAfterAnnot holds when Reap may delete a kept quarantined pod
	// (RFC 3339): the playbook's deleteAfter, for pods whose snapshot never
	// succeeded. The deadline lives on the pod, so a restart loses nothing.
	DeleteAfterAnnot = "parry.dev/delete-after"
)

// Spec declares the step.
func Spec() function.Spec {
	return function.Spec{
		Name:        Name,
		Description: "Orphan the quarantined pod so its controller starts a clean replacement, wait for it to be Ready, delete the quarantined pod once its evidence is saved.",
		Params: []function.Param{
			{Name: "readyTimeout", Type: function.Duration, Default: "60s", Description: "how long to wait for the replacement to be Ready"},
			{Name: "barePods", Type: function.String, Enum: []string{"refuse", "recreate"}, Default: "refuse", Description: "a pod without a controller: refuse, or recreate it from its spec"},
			{Name: "deleteAfter", Type: function.Duration, Description: "delete a kept quarantined pod this long after it was orphaned even without a snapshot (unset: keep it until a respawn after snapshot.done)"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "patch", "create", "delete"}},
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets", "statefulsets"}, Verbs: []string{"get"}},
		},
		Example: `- name: respawn
  function: respawn
  after: [snapshot]
  when: succeeded`,
	}
}

// Respawner is the respawn step with its client.
type Respawner struct {
	kube      kubernetes.Interface
	playbooks function.Playbooks
	guard     *guard.Guard
	log       zerolog.Logger
}

// New returns the step.
func New(kube kubernetes.Interface, playbooks function.Playbooks, log zerolog.Logger) *Respawner {
	return &Respawner{kube: kube, playbooks: playbooks, guard: guard.New(), log: log.With().Str("component", Name).Logger()}
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

// Handle respawns the pod an incident names.
func (s *Respawner) Handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	ns, name, uid := events.String(e, events.ExtPodNamespace), events.String(e, events.ExtPodName), events.String(e, events.ExtPodUID)
	incident, playbook := events.String(e, events.ExtIncident), events.String(e, events.ExtPlaybook)
	if ns == "" || name == "" {
		return s.failed(e, "the event names no pod (podns, podname): nothing to respawn")
	}
	cfg, err := s.playbooks.StepConfig(playbook, Name)
	if err != nil {
		return s.failed(e, fmt.Sprintf("playbook %q: %v", playbook, err))
	}
	if s.kube == nil {
		return s.failed(e, "skipped: no Kubernetes cluster (KUBECONFIG is unset): nothing to respawn")
	}
	evidenceSaved := e.Type() == events.StepDone("snapshot")
	res := Result{Namespace: ns, Pod: name, DryRun: cfg.DryRun}

	pod, err := s.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) || (err == nil && uid != "" && string(pod.UID) != uid):
		res.DeleteNote = "the quarantined pod is already gone; its controller replaces it as usual"
		return s.done(e, res)
	case apierrors.IsForbidden(err):
		return s.failed(e, "RBAC: "+err.Error())
	case err != nil:
		return nil, fmt.Errorf("reading pod %s/%s: %w (retried per the Trigger's delivery spec)", ns, name, err)
	}
	if r := s.guard.Admit(guard.Target{Playbook: playbook, Incident: incident, Namespace: ns, PodLabels: pod.Labels}, cfg.Guard); r != nil {
		return s.failed(e, r.Reason)
	}
	owner := metav1.GetControllerOf(pod)
	if pod.Annotations[OrphanedFromAnnot] != "" {
		// A redelivery or a second respawn step: orphaned before.
		res.Controller, res.Orphaned = pod.Annotations[OrphanedFromAnnot], true
		owner = nil
	}
	switch {
	case owner != nil && owner.Kind == "ReplicaSet":
		res.Controller = "ReplicaSet/" + owner.Name
		return s.orphan(ctx, e, pod, owner.Name, cfg, evidenceSaved, res)
	case owner != nil && owner.Kind == "StatefulSet":
		res.Controller = "StatefulSet/" + owner.Name
		if !evidenceSaved {
			return s.failed(e, "a StatefulSet pod comes back under the same name, so it can only be replaced by deleting it, and its evidence is not saved yet: chain respawn after snapshot")
		}
		return s.deleteAndWait(ctx, e, pod, cfg, res)
	case owner != nil:
		return s.failed(e, fmt.Sprintf("pods owned by a %s are not respawned (only ReplicaSet and StatefulSet pods)", owner.Kind))
	case res.Orphaned:
		return s.finish(ctx, e, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
	case cfg.Params.String("barePods") == "recreate":
		return s.recreate(ctx, e, pod, cfg, evidenceSaved, res)
	default:
		return s.failed(e, "a bare pod has no controller to replace it; set barePods: recreate to recreate it from its spec")
	}
}

// orphan moves the labels the ReplicaSet selects on into an annotation and
// drops the owner reference: the ReplicaSet no longer counts the pod and
// starts a replacement; the pod keeps running, quarantined, for evidence.
func (s *Respawner) orphan(ctx context.Context, e cloudevents.Event, pod *corev1.Pod, rsName string, cfg function.StepConfig, evidenceSaved bool, res Result) (*cloudevents.Event, error) {
	rs, err := s.kube.AppsV1().ReplicaSets(pod.Namespace).Get(ctx, rsName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading ReplicaSet %s/%s: %w", pod.Namespace, rsName, err)
	}
	selector, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil {
		return s.failed(e, fmt.Sprintf("ReplicaSet %s has an invalid selector: %v", rsName, err))
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
	remaining := labels.Set{}
	for k, v := range pod.Labels {
		if _, gone := moved[k]; !gone {
			remaining[k] = v
		}
	}
	if selector.Matches(remaining) {
		return s.failed(e, fmt.Sprintf("ReplicaSet %s would still select the pod without its selector labels (NotIn/DoesNotExist expressions); not orphaning", rsName))
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
		"annotations":     map[string]string{OriginalLabelsAnnot: string(original), OrphanedFromAnnot: "ReplicaSet/" + rsName},
		"ownerReferences": []any{},
	}})
	if cfg.DryRun {
		res.Intended = map[string]any{"patch": "pods/" + pod.Namespace + "/" + pod.Name, "mergePatch": json.RawMessage(patch)}
		return s.done(e, res)
	}
	if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-respawn"}); err != nil {
		if apierrors.IsForbidden(err) {
			return s.failed(e, "RBAC: "+err.Error())
		}
		return nil, fmt.Errorf("orphaning pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Orphaned = true
	replacement, at, err := s.waitReady(ctx, pod.Namespace, selector, existing, cfg.Params.Duration("readyTimeout"))
	if err != nil {
		return s.failed(e, err.Error()+"; the quarantined pod is kept")
	}
	res.Replacement, res.ReadyAt = replacement, at
	return s.finish(ctx, e, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
}

// finish deletes the quarantined pod once its evidence is saved.
func (s *Respawner) finish(ctx context.Context, e cloudevents.Event, pod *corev1.Pod, evidenceSaved bool, ttl time.Duration, res Result) (*cloudevents.Event, error) {
	if !evidenceSaved {
		res.DeleteNote = "kept: the quarantined pod is deleted by a respawn step chained after snapshot.done"
		if ttl > 0 {
			at := time.Now().Add(ttl).UTC().Format(time.RFC3339)
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{DeleteAfterAnnot: at}}})
			if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-respawn"}); err != nil {
				return nil, fmt.Errorf("setting the deletion deadline of %s/%s: %w", pod.Namespace, pod.Name, err)
			}
			res.DeleteNote = "kept until " + at + " (deleteAfter), or until a respawn after snapshot.done"
		}
		return s.done(e, res)
	}
	if err := s.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		if apierrors.IsForbidden(err) {
			return s.failed(e, "RBAC: "+err.Error())
		}
		return nil, fmt.Errorf("deleting quarantined pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Deleted = true
	return s.done(e, res)
}

func (s *Respawner) deleteAndWait(ctx context.Context, e cloudevents.Event, pod *corev1.Pod, cfg function.StepConfig, res Result) (*cloudevents.Event, error) {
	if cfg.DryRun {
		res.Intended = map[string]string{"delete": "pods/" + pod.Namespace + "/" + pod.Name}
		return s.done(e, res)
	}
	out, err := s.finish(ctx, e, pod, true, 0, res)
	if err != nil || out.Type() != events.StepDone(Name) {
		return out, err
	}
	res.Deleted = true
	deadline := time.Now().Add(cfg.Params.Duration("readyTimeout"))
	for ; time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		p, err := s.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.UID != pod.UID && isReady(p) {
			res.Replacement, res.ReadyAt = p.Name, time.Now()
			return s.done(e, res)
		}
	}
	return s.failed(e, fmt.Sprintf("StatefulSet pod %s was deleted but not Ready again within %s", pod.Name, cfg.Params.Duration("readyTimeout")))
}

func (s *Respawner) recreate(ctx context.Context, e cloudevents.Event, pod *corev1.Pod, cfg function.StepConfig, evidenceSaved bool, res Result) (*cloudevents.Event, error) {
	clean := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + "-", Namespace: pod.Namespace, Labels: map[string]string{}, Annotations: map[string]string{OrphanedFromAnnot: "recreated-from/" + pod.Name}},
		Spec:       *pod.Spec.DeepCopy(),
	}
	for k, v := range pod.Labels {
		if k != "parry.dev/quarantine" {
			clean.Labels[k] = v
		}
	}
	clean.Spec.NodeName = ""
	if cfg.DryRun {
		res.Intended = clean
		return s.done(e, res)
	}
	created, err := s.kube.CoreV1().Pods(pod.Namespace).Create(ctx, clean, metav1.CreateOptions{FieldManager: "parry-respawn"})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return s.failed(e, "RBAC: "+err.Error())
		}
		return nil, fmt.Errorf("recreating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	res.Controller = "none (bare pod, recreated)"
	deadline := time.Now().Add(cfg.Params.Duration("readyTimeout"))
	for ; time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		p, err := s.kube.CoreV1().Pods(pod.Namespace).Get(ctx, created.Name, metav1.GetOptions{})
		if err == nil && isReady(p) {
			res.Replacement, res.ReadyAt = p.Name, time.Now()
			return s.finish(ctx, e, pod, evidenceSaved, cfg.Params.Duration("deleteAfter"), res)
		}
	}
	return s.failed(e, fmt.Sprintf("recreated pod %s not Ready within %s; the quarantined pod is kept", created.Name, cfg.Params.Duration("readyTimeout")))
}

// Reap deletes kept quarantined pods whose deleteAfter deadline has passed,
// every interval until ctx is done. It reads the deadlines from the pods
// themselves, so it may run anywhere and restart at any time.
func (s *Respawner) Reap(ctx context.Context, interval time.Duration) {
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

func (s *Respawner) reapOnce(ctx context.Context, now time.Time) {
	if s.kube == nil {
		return
	}
	pods, err := s.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "parry.dev/quarantine"})
	if err != nil {
		s.log.Warn().Err(err).Msg("listing quarantined pods to reap")
		return
	}
	for _, p := range pods.Items {
		deadline, err := time.Parse(time.RFC3339, p.Annotations[DeleteAfterAnnot])
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
func (s *Respawner) waitReady(ctx context.Context, ns string, selector labels.Selector, existing map[types.UID]bool, timeout time.Duration) (string, time.Time, error) {
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

func (s *Respawner) done(cause cloudevents.Event, res Result) (*cloudevents.Event, error) {
	return function.Done(cause, Name, res)
}

func (s *Respawner) failed(cause cloudevents.Event, reason string) (*cloudevents.Event, error) {
	s.log.Warn().Str("event_id", cause.ID()).Str("incident", events.String(cause, events.ExtIncident)).Str("reason", reason).Msg("not respawning")
	return function.Failed(cause, Name, reason)
}
