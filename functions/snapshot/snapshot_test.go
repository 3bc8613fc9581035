package snapshot_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

type playbooks struct{}

func (playbooks) StepConfig(_, _ string) (step.StepConfig, error) {
	p, err := snapshot.Definition().Spec.Validate(nil)
	return step.StepConfig{Params: p}, err
}

// newStep is the step as the runtime runs it, without a sensor, keeping
// its evidence under state.
func newStep(t *testing.T, cs kubernetes.Interface, meta metadata.Interface, state string) events.Handler {
	t.Helper()
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: cs, Meta: meta, Playbooks: playbooks{}, StateDir: state, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return steptest.Sealed(h)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func runningPod(t *testing.T, cs kubernetes.Interface, ns string) corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	replicas := int32(1)
	labels := map[string]string{"app": "web"}
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:1"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				return p
			}
		}
	}
	t.Fatal("no Running pod")
	return corev1.Pod{}
}

func incident(t *testing.T, pod corev1.Pod, id string) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: id,
		Extensions: map[string]string{events.ExtPodNamespace: pod.Namespace, events.ExtPodName: pod.Name, events.ExtPodUID: string(pod.UID),
			events.ExtIncident: id, events.ExtPlaybook: "miner"}})
	must(t, err)
	return e
}

func TestBundleOfARunningPodVerifiesAndDetectsTampering(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	meta := metadata.NewForConfigOrDie(env.RESTConfig())
	pod := runningPod(t, cs, "evidence")
	store := t.TempDir()
	handle := newStep(t, cs, meta, store)
	ev := incident(t, pod, "inc-snap")
	reply, err := handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("reply %s %s", reply.Type(), reply.Data())
	}
	var res snapshot.Result
	must(t, json.Unmarshal(reply.Data(), &res))
	digest, err := snapshot.Verify(res.Bundle)
	if err != nil || digest != res.ManifestSHA256 {
		t.Fatalf("bundle does not verify: %v (digest %s, reply says %s)", err, digest, res.ManifestSHA256)
	}
	var owners []metav1.PartialObjectMetadata
	data, err := os.ReadFile(filepath.Join(res.Bundle, "owners.json"))
	must(t, err)
	must(t, json.Unmarshal(data, &owners))
	if len(owners) != 2 || owners[0].Kind != "ReplicaSet" || owners[1].Kind != "Deployment" {
		t.Fatalf("owner chain %+v, want ReplicaSet then Deployment", owners)
	}
	if !strings.Contains(res.Unavailable["logs/app.log"], "kubelet") || res.Unavailable["flight-recorder.json"] == "" {
		t.Fatalf("unavailable parts not explained: %v", res.Unavailable)
	}

	again, err := handle(context.Background(), ev)
	if err != nil || again.ID() != reply.ID() {
		t.Fatalf("redelivery: %v %v", again, err)
	}

	podFile := filepath.Join(res.Bundle, "pod.json")
	must(t, os.Chmod(podFile, 0o600))
	must(t, os.WriteFile(podFile, []byte(`{"forged": true}`), 0o600))
	if _, err := snapshot.Verify(res.Bundle); err == nil || !strings.Contains(err.Error(), "pod.json") {
		t.Fatalf("tampering not detected: %v", err)
	}
}

func TestPodAlreadyGoneStillSavesABundle(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	gone := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "evidence", Name: "vanished", UID: "0000-gone"}}
	reply, err := newStep(t, cs, metadata.NewForConfigOrDie(env.RESTConfig()), t.TempDir())(context.Background(), incident(t, gone, "inc-gone"))
	if err != nil {
		t.Fatal(err)
	}
	var res snapshot.Result
	must(t, json.Unmarshal(reply.Data(), &res))
	if reply.Type() != events.StepDone(snapshot.Name) || !res.PodGone {
		t.Fatalf("reply %s %s", reply.Type(), reply.Data())
	}
	if _, err := snapshot.Verify(res.Bundle); err != nil {
		t.Fatal(err)
	}
}
