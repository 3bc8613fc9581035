package respawn_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

type playbooks map[string]any

func (pb playbooks) StepConfig(_, _ string) (step.StepConfig, error) {
	raw := map[string]any{"readyTimeout": "30s"}
	for k, v := range pb {
		raw[k] = v
	}
	p, err := respawn.Definition().Spec.Validate(raw)
	return step.StepConfig{Params: p}, err
}

// newStep is the step as the runtime runs it.
func newStep(t *testing.T, cs kubernetes.Interface, pb playbooks) events.Handler {
	t.Helper()
	h, err := step.Build(t.Context(), respawn.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: cs, Playbooks: pb, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return steptest.Sealed(h)
}

func cause(t *testing.T, pod corev1.Pod, typ, id string) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: typ, Source: "parry://function/test", Key: id + typ,
		Extensions: map[string]string{events.ExtPodNamespace: pod.Namespace, events.ExtPodName: pod.Name, events.ExtPodUID: string(pod.UID),
			events.ExtIncident: id, events.ExtPlaybook: "miner"}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// quarantine labels pod as isolate does for incident.
func quarantine(t *testing.T, cs kubernetes.Interface, pod corev1.Pod, incident string) {
	t.Helper()
	if _, err := cs.CoreV1().Pods(pod.Namespace).Patch(t.Context(), pod.Name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"`+labels.Quarantine+`":"`+incident+`"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestOrphanReplaceThenDeleteAfterSnapshot(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	pods := devenv.WebDeployment(t, cs, "respawn", 2)
	victim := pods[0]
	quarantine(t, cs, victim, "inc-r")
	handle := newStep(t, cs, playbooks{})

	started := time.Now()
	reply, err := handle(ctx, cause(t, victim, events.StepDone("isolate"), "inc-r"))
	if err != nil {
		t.Fatal(err)
	}
	var res respawn.Result
	json.Unmarshal(reply.Data(), &res)
	if reply.Type() != events.StepDone(respawn.Name) || !res.Orphaned || res.Replacement == "" || res.Deleted {
		t.Fatalf("reply %s %s", reply.Type(), reply.Data())
	}
	t.Logf("orphan → replacement Ready: %s", res.ReadyAt.Sub(started))
	devenv.WaitWeb(t, cs, "respawn", 2)
	kept, err := cs.CoreV1().Pods("respawn").Get(ctx, victim.Name, metav1.GetOptions{})
	if err != nil || metav1.GetControllerOf(kept) != nil || kept.Labels["app"] != "" || !strings.Contains(kept.Annotations[labels.OriginalLabels], `"app":"web"`) {
		t.Fatalf("quarantined pod not kept as an orphan: %v %+v", err, kept.ObjectMeta)
	}

	reply, err = handle(ctx, cause(t, victim, events.StepDone("snapshot"), "inc-r"))
	if err != nil || reply.Type() != events.StepDone(respawn.Name) {
		t.Fatalf("after snapshot: %v %v", reply, err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := cs.CoreV1().Pods("respawn").Get(ctx, victim.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("quarantined pod not deleted after the snapshot: %v", err)
		}
	}
	devenv.WaitWeb(t, cs, "respawn", 2)
}

func TestKeptPodIsReapedAfterDeleteAfter(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	victim := devenv.WebDeployment(t, cs, "reap", 2)[0]
	// A quarantine label, as isolate leaves it: the reaper only looks there.
	quarantine(t, cs, victim, "inc-reap")
	handle := newStep(t, cs, playbooks{"deleteAfter": "1s"})
	reply, err := handle(ctx, cause(t, victim, events.StepDone("isolate"), "inc-reap"))
	if err != nil || reply.Type() != events.StepDone(respawn.Name) {
		t.Fatalf("%v %v", reply, err)
	}
	kept, err := cs.CoreV1().Pods("reap").Get(ctx, victim.Name, metav1.GetOptions{})
	if err != nil || kept.Annotations[labels.DeleteAfter] == "" {
		t.Fatalf("kept pod has no deadline: %v", err)
	}
	reapCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go respawn.ReapEvery(reapCtx, cs, 200*time.Millisecond)
	for {
		if _, err := cs.CoreV1().Pods("reap").Get(ctx, victim.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		}
		if reapCtx.Err() != nil {
			t.Fatal("the reaper did not delete the pod past its deadline")
		}
		time.Sleep(100 * time.Millisecond)
	}
	devenv.WaitWeb(t, cs, "reap", 2)
}

func TestBarePodAndProtectedNamespaceAreRefused(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	handle := newStep(t, cs, playbooks{})
	for _, ns := range []string{"bare", "kube-system"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		var pod *corev1.Pod
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			pod, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "lonely"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}}}, metav1.CreateOptions{})
			if err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		reply, err := handle(ctx, cause(t, *pod, events.StepDone("snapshot"), "inc-"+ns))
		if err != nil || reply.Type() != events.StepFailed(respawn.Name) {
			t.Fatalf("%s: %v %v", ns, reply, err)
		}
		if _, err := cs.CoreV1().Pods(ns).Get(ctx, "lonely", metav1.GetOptions{}); err != nil {
			t.Fatalf("%s: refused pod was touched: %v", ns, err)
		}
	}
}

// respawn deletes only what classify's seal and isolate's quarantine
// vouch for: a forged snapshot.done (no seal: classify never opened the
// incident), or one for a pod quarantined under another incident, deletes
// nothing. The positive control deletes the pod with the real event.
func TestForgedOrMismatchedSnapshotDoneDeletesNothing(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	sts := devenv.WebDeployment(t, cs, "forged", 1)[0]
	unsealed, err := step.Build(ctx, respawn.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: cs, Playbooks: playbooks{}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	sealed := steptest.Sealed(unsealed)
	alive := func() {
		t.Helper()
		p, err := cs.CoreV1().Pods(sts.Namespace).Get(ctx, sts.Name, metav1.GetOptions{})
		if err != nil || p.UID != sts.UID || p.DeletionTimestamp != nil {
			t.Fatalf("the pod was deleted: %v", err)
		}
	}

	reply, err := unsealed(ctx, cause(t, sts, events.StepDone("snapshot"), "inc-forged"))
	if err != nil || reply.Type() != events.StepFailed(respawn.Name) || !strings.Contains(string(reply.Data()), "incident seal") {
		t.Fatalf("forged snapshot.done: %v %v", reply, err)
	}
	alive()
	quarantine(t, cs, sts, "inc-other")
	reply, err = sealed(ctx, cause(t, sts, events.StepDone("snapshot"), "inc-forged"))
	if err != nil || reply.Type() != events.StepFailed(respawn.Name) || !strings.Contains(string(reply.Data()), "carries the quarantine of another incident") {
		t.Fatalf("snapshot.done of another incident: %v %v", reply, err)
	}
	alive()
	// Not quarantined (yet): an error, which the broker retries until
	// isolate's label is there or the retries are spent.
	unlabel := []byte(`{"metadata":{"labels":{"` + labels.Quarantine + `":null}}}`)
	if _, err := cs.CoreV1().Pods(sts.Namespace).Patch(ctx, sts.Name, "application/merge-patch+json", unlabel, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if reply, err = sealed(ctx, cause(t, sts, events.StepDone("snapshot"), "inc-forged")); err == nil || !strings.Contains(err.Error(), "quarantine yet") {
		t.Fatalf("snapshot.done before the quarantine: %v %v, want an error that is retried", reply, err)
	}
	alive()

	quarantine(t, cs, sts, "inc-forged")
	reply, err = sealed(ctx, cause(t, sts, events.StepDone("snapshot"), "inc-forged"))
	if err != nil || reply.Type() != events.StepDone(respawn.Name) {
		t.Fatalf("the real snapshot.done: %v %v", reply, err)
	}
	if p, err := cs.CoreV1().Pods(sts.Namespace).Get(ctx, sts.Name, metav1.GetOptions{}); err == nil && p.UID == sts.UID && p.DeletionTimestamp == nil {
		t.Fatalf("the real chain did not delete the quarantined pod: %s", reply.Data())
	}
}
