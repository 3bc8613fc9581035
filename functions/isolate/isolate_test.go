package isolate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// playbooks is a fixed configuration: which playbook asks what of isolate.
type playbooks map[string]step.StepConfig

func (p playbooks) StepConfig(playbook, _ string) (step.StepConfig, error) {
	c, ok := p[playbook]
	if !ok {
		return c, fmt.Errorf("no playbook %q", playbook)
	}
	params, err := isolate.Definition().Spec.Validate(map[string]any{"allowEgress": []any{"dns", "10.0.0.5/32:443"}, "kernelBlock": playbook == "kernel"})
	c.Params = params
	return c, err
}

var config = playbooks{
	"miner":   {},
	"kernel":  {},
	"ten":     {Guard: guard.Rules{RateIncidents: 10, RatePer: "1h"}},
	"dry":     {Guard: guard.Rules{DryRun: true}},
	"limited": {Guard: guard.Rules{RateIncidents: 2, RatePer: "1m"}},
}

// newStep is the step as the runtime runs it, without a sensor.
func newStep(t *testing.T, kube kubernetes.Interface) events.Handler {
	t.Helper()
	h, err := step.Build(t.Context(), isolate.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: kube, Playbooks: config, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return steptest.Sealed(h)
}

func getPod(t *testing.T, cs kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func makePod(t *testing.T, cs kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The ServiceAccount admission plugin needs the namespace's default
	// ServiceAccount, which the controller-manager creates moments later.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no default ServiceAccount in %s: %v", ns, err)
		}
	}
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func incident(pod *corev1.Pod, playbook, id string) cloudevents.Event {
	e, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: id,
		Extensions: map[string]string{events.ExtPodNamespace: pod.Namespace, events.ExtPodName: pod.Name, events.ExtPodUID: string(pod.UID),
			events.ExtIncident: id, events.ExtPlaybook: playbook}})
	if err != nil {
		panic(err)
	}
	return e
}

func result(t *testing.T, reply *cloudevents.Event, wantType string) isolate.Result {
	t.Helper()
	if reply == nil || reply.Type() != wantType {
		t.Fatalf("reply %v, want type %s", reply, wantType)
	}
	var r isolate.Result
	if err := json.Unmarshal(reply.Data(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestIsolateLabelsAndStoresPolicyIdempotently(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	pod := makePod(t, cs, "shop", "web-1")
	sibling := makePod(t, cs, "shop", "web-2")
	handle := newStep(t, cs)

	ev := incident(pod, "miner", "inc-42")
	reply, err := handle(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(isolate.Name))
	got := getPod(t, cs, "shop", "web-1")
	if got.Labels[labels.Quarantine] != "inc-42" || got.Annotations[labels.Incident] != "inc-42" {
		t.Fatalf("pod not labelled: %v %v", got.Labels, got.Annotations)
	}
	if s := getPod(t, cs, "shop", "web-2"); s.Labels[labels.Quarantine] != "" {
		t.Fatalf("sibling %s was quarantined too", sibling.Name)
	}
	np, err := cs.NetworkingV1().NetworkPolicies("shop").Get(ctx, res.NetworkPolicy, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("NetworkPolicy %s not stored: %v", res.NetworkPolicy, err)
	}
	if np.Spec.PodSelector.MatchLabels[labels.Quarantine] != "inc-42" || len(np.Spec.Ingress) != 0 || len(np.Spec.Egress) != 2 || len(np.Spec.PolicyTypes) != 2 {
		t.Fatalf("policy does not deny all but the allow-list: %+v", np.Spec)
	}
	if res.KernelBlock == "applied" {
		t.Fatal("kernel block reported without a sensor")
	}

	again, err := handle(ctx, ev)
	if err != nil {
		t.Fatalf("redelivery failed: %v", err)
	}
	if again.ID() != reply.ID() || again.Type() != reply.Type() {
		t.Fatalf("redelivery replied differently: %s %s vs %s %s", again.ID(), again.Type(), reply.ID(), reply.Type())
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	pod := makePod(t, cs, "dry", "web-1")
	reply, err := newStep(t, cs)(ctx, incident(pod, "dry", "inc-dry"))
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(isolate.Name))
	if !res.DryRun || len(res.Intended) != 2 {
		t.Fatalf("dry run did not record the intended change: %+v", res)
	}
	if got := getPod(t, cs, "dry", "web-1"); got.Labels[labels.Quarantine] != "" {
		t.Fatal("dry run labelled the pod")
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("dry").Get(ctx, res.NetworkPolicy, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run stored a NetworkPolicy: %v", err)
	}
}

func TestGuardrails(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	handle := newStep(t, cs)

	system := makePod(t, cs, "kube-system", "miner")
	reply, err := handle(ctx, incident(system, "miner", "inc-sys"))
	if err != nil || reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), "kube-system is protected") {
		t.Fatalf("protected namespace: %v %v", reply, err)
	}
	if got := getPod(t, cs, "kube-system", "miner"); got.Labels[labels.Quarantine] != "" {
		t.Fatal("a pod in kube-system was touched")
	}

	var refused int
	for i := range 5 {
		pod := makePod(t, cs, "burst", fmt.Sprint("p", i))
		reply, err := handle(ctx, incident(pod, "limited", fmt.Sprint("inc-burst-", i)))
		if err != nil {
			t.Fatal(err)
		}
		if reply.Type() == events.StepFailed(isolate.Name) && strings.Contains(string(reply.Data()), "circuit breaker") {
			refused++
		}
	}
	if refused != 3 {
		t.Fatalf("rate limit 2: %d of 5 incidents refused, want 3", refused)
	}
}

func TestForbiddenNamesTheMissingVerb(t *testing.T) {
	env := devenv.Require(t)
	admin := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	pod := makePod(t, admin, "rbac", "web-1")
	// The step's ServiceAccount with its declared rules minus patch on pods.
	rules := isolate.Definition().Spec.ClusterRules
	rules[0].Verbs = []string{"get"}
	cfg := env.BoundServiceAccount(t, "rbac", "isolate-without-patch", rules, authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods", Namespace: "rbac"})
	limited := kubernetes.NewForConfigOrDie(cfg)
	reply, err := newStep(t, limited)(ctx, incident(pod, "miner", "inc-rbac"))
	if err != nil {
		t.Fatal(err)
	}
	if reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), `cannot patch resource \"pods\"`) {
		t.Fatalf("forbidden patch: %s %s", reply.Type(), reply.Data())
	}
}

// isolate runs with exactly the rules its Spec declares, and it declares no
// verb it does not use: without any one verb on pods or networkpolicies the
// step fails. (get on nodes finds the node's sensor address for the
// in-kernel block; this test runs without a sensor.)
func TestDeclaredRulesAreAllNeeded(t *testing.T) {
	env := devenv.Require(t)
	admin := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	const ns = "rules"
	as := func(name string, rules []rbacv1.PolicyRule) kubernetes.Interface {
		t.Helper()
		// get on nodes is in every variant of the rules.
		return kubernetes.NewForConfigOrDie(env.BoundServiceAccount(t, ns, "isolate-"+name, rules, authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes"}))
	}
	declared := isolate.Definition().Spec.ClusterRules
	pod := makePod(t, admin, ns, "web-exact")
	reply, err := newStep(t, as("exact", declared))(ctx, incident(pod, "miner", "inc-exact"))
	if err != nil {
		t.Fatal(err)
	}
	result(t, reply, events.StepDone(isolate.Name))
	n := 0
	for ri, r := range declared {
		// The sensor, not the API server, checks the grant on
		// sensors.parry.dev (its TestAPIAuthInCluster refuses snapshot's
		// account the block isolate's account may make).
		if slices.Contains(r.Resources, "nodes") || slices.Contains(r.APIGroups, api.Group) {
			continue
		}
		for vi, verb := range r.Verbs {
			n++
			rules := make([]rbacv1.PolicyRule, len(declared))
			for i := range declared {
				rules[i] = *declared[i].DeepCopy()
			}
			rules[ri].Verbs = slices.Delete(rules[ri].Verbs, vi, vi+1)
			if len(rules[ri].Verbs) == 0 {
				rules = slices.Delete(rules, ri, ri+1)
			}
			pod := makePod(t, admin, ns, fmt.Sprint("web-", n))
			// A failed reply or an error (which the Trigger retries): either
			// way the step did not get done.
			reply, err := newStep(t, as(fmt.Sprint("without-", n), rules))(ctx, incident(pod, "miner", fmt.Sprint("inc-without-", n)))
			if err == nil && (reply == nil || reply.Type() != events.StepFailed(isolate.Name)) {
				t.Errorf("without %s on %v the step still succeeds: the Spec declares a verb it does not need", verb, r.Resources)
			}
		}
	}
}

// sensorCalls is a sensor API that records the pods it was asked to block.
func sensorCalls(t *testing.T) (step.SensorLocator, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var blocked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		blocked = append(blocked, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	return step.SensorAt(strings.TrimPrefix(srv.URL, "http://"), srv.Client()), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(blocked)
	}
}

// Attacks on what an event claims (issue 15): each must leave the pod
// alone, and the positive control at the end proves the same step blocks
// and labels a pod for a real incident.
func TestEventClaimsAreVerified(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	sensors, calls := sensorCalls(t)
	raw, err := step.Build(ctx, isolate.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: cs, Sensors: sensors, Playbooks: config, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	sealed := steptest.Sealed(raw)
	system := makePod(t, cs, "kube-system", "coredns-trust")

	// A kube-system pod's UID and name, claimed to be in default: the
	// seal does not match what classify sealed (its real namespace)...
	spoofed := incident(system, "kernel", "inc-spoof")
	step.SealEvent(steptest.Key, &spoofed)
	spoofed.SetExtension(events.ExtPodNamespace, "default")
	reply, err := raw(ctx, spoofed)
	if err != nil || reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), "seal does not match") {
		t.Fatalf("spoofed podns: %v %v", reply, err)
	}
	// ...and were it sealed so, the API server has no such pod in default.
	reply, err = sealed(ctx, spoofed)
	if err != nil || reply.Type() != events.StepDone(isolate.Name) || !result(t, reply, events.StepDone(isolate.Name)).PodGone {
		t.Fatalf("spoofed podns, sealed: %v %v", reply, err)
	}
	// With the watch of every pod, the UID itself says where the pod is.
	pods, err := step.WatchPods(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	indexed, err := step.Build(ctx, isolate.Definition(), step.Deps{IncidentKey: steptest.Key, Kube: cs, Pods: pods, Sensors: sensors, Playbooks: config, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	reply, err = steptest.Sealed(indexed)(ctx, spoofed)
	if err != nil || reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), "is kube-system/coredns-trust, not default/coredns-trust") {
		t.Fatalf("spoofed podns, sealed, resolved by UID: %v %v", reply, err)
	}
	// An incident classify never opened (no seal).
	forged := incident(system, "kernel", "inc-forged")
	forged.SetExtension(events.ExtPodNamespace, "default")
	reply, err = raw(ctx, forged)
	if err != nil || reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), "no valid incident seal") {
		t.Fatalf("unsealed incident: %v %v", reply, err)
	}
	if got := getPod(t, cs, "kube-system", "coredns-trust"); got.Labels[labels.Quarantine] != "" {
		t.Fatal("the kube-system pod was labelled")
	}
	if c := calls(); len(c) != 0 {
		t.Fatalf("the sensor was asked to block for a spoofed event: %v", c)
	}

	// A pod on one node, named by an event of another node's sensor.
	elsewhere := makePod(t, cs, "nodes", "web-1")
	for deadline := time.Now().Add(15 * time.Second); elsewhere.Spec.NodeName == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pod was never scheduled")
		}
		elsewhere = getPod(t, cs, "nodes", "web-1")
	}
	wrongNode := incident(elsewhere, "kernel", "inc-node")
	wrongNode.SetExtension(events.ExtNode, "not-"+elsewhere.Spec.NodeName)
	reply, err = sealed(ctx, wrongNode)
	if err != nil || reply.Type() != events.StepFailed(isolate.Name) || !strings.Contains(string(reply.Data()), "runs on node "+elsewhere.Spec.NodeName) {
		t.Fatalf("event from another node: %v %v", reply, err)
	}
	if c := calls(); len(c) != 0 {
		t.Fatalf("the sensor was asked to block for an event from the wrong node: %v", c)
	}

	// A workload that labels itself part of parry is still isolated:
	// parry's own pods are known by namespace, never by a label.
	self := makePod(t, cs, "selflabel", "miner")
	if _, err := cs.CoreV1().Pods("selflabel").Patch(ctx, self.Name, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"`+labels.PartOf+`":"`+labels.PartOfParry+`"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	reply, err = sealed(ctx, incident(self, "kernel", "inc-self"))
	if err != nil || reply.Type() != events.StepDone(isolate.Name) {
		t.Fatalf("self-labelled pod: %v %v", reply, err)
	}
	if got := getPod(t, cs, "selflabel", "miner"); got.Labels[labels.Quarantine] != "inc-self" {
		t.Fatalf("the self-labelled pod was not quarantined: %v", got.Labels)
	}
	if c := calls(); !slices.Equal(c, []string{"PUT /v1/pods/" + string(self.UID) + "/block"}) {
		t.Fatalf("sensor calls %v, want the one block of the self-labelled pod", c)
	}
}

// One incident id reused for 20 pods counts 20 pods against a limit of 10:
// the breaker holds at 10 whatever the incident ids say.
func TestIncidentIDReuseDoesNotPassTheLimit(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	handle := newStep(t, cs)
	quarantined := 0
	for i := range 20 {
		pod := makePod(t, cs, "reuse", fmt.Sprint("p", i))
		reply, err := handle(ctx, incident(pod, "ten", "inc-reused"))
		if err != nil {
			t.Fatal(err)
		}
		if got := getPod(t, cs, "reuse", pod.Name); got.Labels[labels.Quarantine] != "" {
			quarantined++
		} else if !strings.Contains(string(reply.Data()), "circuit breaker") {
			t.Fatalf("pod %d neither quarantined nor refused by the breaker: %s", i, reply.Data())
		}
	}
	if quarantined != 10 {
		t.Fatalf("%d of 20 pods quarantined under one incident id, want the limit of 10", quarantined)
	}
}
