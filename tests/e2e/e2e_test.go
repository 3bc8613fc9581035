package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/embedded"
	"parry.dev/parry/tests/podcgroup"
)

const configDir = "../../config"

// TestMain doubles as the workload: with PARRY_E2E_CONNECT=addr the test
// binary connects once and exits 0 on success, 13 when the kernel refused
// the connect with EPERM, 1 otherwise.
func TestMain(m *testing.M) {
	if addr := os.Getenv("PARRY_E2E_CONNECT"); addr != "" {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			os.Exit(0)
		case errors.Is(err, syscall.EPERM):
			os.Exit(13)
		default:
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	devenv.Main(m)
}

// connectFrom connects to addr from inside the pod's cgroup.
func connectFrom(t *testing.T, p *podcgroup.Pod, addr string) int {
	t.Helper()
	cmd := p.Command(t, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PARRY_E2E_CONNECT="+addr)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("running the workload: %v %s", err, out)
	}
	return 0
}

type world struct {
	env   *devenv.Env
	kube  kubernetes.Interface
	stack *stack.Stack
}

// start runs the embedded default against the local environment's cluster,
// as `KUBECONFIG=... parry run` does.
func start(t *testing.T) *world {
	t.Helper()
	podcgroup.Require(t)
	env := devenv.Require(t)
	s := embedded.Start(t, embedded.Options{ConfigDir: configDir, Kubeconfig: env.Kubeconfig, Node: env.NodeName})
	return &world{env: env, kube: kubernetes.NewForConfigOrDie(env.RESTConfig()), stack: s}
}

// reply waits for the journal to hold an event of type typ about the pod.
func (w *world) reply(t *testing.T, podUID, typ string, within time.Duration) journal.Entry {
	t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		es, err := w.stack.Journal.Last(context.Background(), 2000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Type == typ && events.String(e.Event, events.ExtPodUID) == podUID {
				return e
			}
		}
	}
	t.Fatalf("no %s for pod %s within %s", typ, podUID, within)
	return journal.Entry{}
}

// saysApplied checks that a step's done reply says each of want in a line
// of its data's "applied".
func saysApplied(t *testing.T, e cloudevents.Event, want ...string) {
	t.Helper()
	got := decode[struct {
		Applied []string `json:"applied"`
	}](t, e).Applied
	for _, w := range want {
		if !slices.ContainsFunc(got, func(line string) bool { return strings.Contains(line, w) }) {
			t.Errorf("%s says it applied %q, not %q", e.Type(), got, w)
		}
	}
}

func decode[T any](t *testing.T, e cloudevents.Event) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(e.Data(), &v); err != nil {
		t.Fatalf("%s: %v", e.Type(), err)
	}
	return v
}

// latencies of one contained miner, from the kernel's connect.
type latencies struct{ block, policy, replacement time.Duration }

// contain runs one miner in the pod and asserts every stage in order.
func (w *world) contain(t *testing.T, ns string, victim, sibling corev1.Pod, verbose bool) latencies {
	t.Helper()
	ctx := context.Background()
	pool, benign := "127.0.0.1:3333", "127.0.0.1:18080"
	miner, neighbour := podcgroup.NewFor(t, string(victim.UID)), podcgroup.NewFor(t, string(sibling.UID))
	if code := connectFrom(t, miner, pool); code != 0 {
		t.Fatalf("the miner's first connect failed (%d) before any incident", code)
	}

	opened := w.reply(t, string(victim.UID), events.TypeIncidentOpened, 10*time.Second)
	incident := events.String(opened.Event, events.ExtIncident)
	root, err := w.stack.Journal.Tree(ctx, opened.ID)
	if err != nil {
		t.Fatal(err)
	}
	kernelTime := root.Event.Time()

	isolated := w.reply(t, string(victim.UID), events.StepDone(isolate.Name), 10*time.Second)
	iso := decode[isolate.Result](t, isolated.Event)
	if iso.KernelBlock != "applied" {
		t.Fatalf("in-kernel block not applied: %+v", iso)
	}
	// Each reply says what it applied, for the trace.
	saysApplied(t, isolated.Event, "in-kernel egress block of pod "+string(victim.UID), "label "+labels.Quarantine+"=", "NetworkPolicy "+ns+"/"+iso.NetworkPolicy)
	pod, err := w.kube.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) { // not found: respawn already deleted it
		t.Fatal(err)
	}
	if err == nil && pod.Labels[labels.Quarantine] == "" {
		t.Fatalf("pod %s carries no quarantine label: %v", victim.Name, pod.Labels)
	}
	if _, err := w.kube.NetworkingV1().NetworkPolicies(ns).Get(ctx, iso.NetworkPolicy, metav1.GetOptions{}); err != nil {
		t.Fatalf("NetworkPolicy %s not stored: %v", iso.NetworkPolicy, err)
	}
	if code := connectFrom(t, miner, benign); code != 13 {
		t.Fatalf("a connect from the quarantined pod's cgroup exited %d, want EPERM (13)", code)
	}
	if code := connectFrom(t, neighbour, benign); code != 0 {
		t.Fatalf("the sibling pod's connect failed (%d): isolation is not per pod", code)
	}

	snapped := w.reply(t, string(victim.UID), events.StepDone(snapshot.Name), 10*time.Second)
	snap := decode[snapshot.Result](t, snapped.Event)
	digest, err := snapshot.Verify(snap.Bundle)
	if err != nil || digest != snap.ManifestSHA256 {
		t.Fatalf("evidence bundle %s does not verify: %v", snap.Bundle, err)
	}
	saysApplied(t, snapped.Event, "evidence bundle "+snap.Bundle, "manifest sha256 "+snap.ManifestSHA256)
	recorder, err := os.ReadFile(filepath.Join(snap.Bundle, "flight-recorder.json"))
	if err != nil || !strings.Contains(string(recorder), `"dport": 3333`) {
		t.Fatalf("the bundle's flight recorder holds no connect to the pool: %v", err)
	}

	respawned := w.reply(t, string(victim.UID), events.StepDone(respawn.Name), 30*time.Second)
	res := decode[respawn.Result](t, respawned.Event)
	if res.Replacement == "" || !res.Deleted {
		t.Fatalf("respawn: %+v", res)
	}
	saysApplied(t, respawned.Event, "replacement "+ns+"/"+res.Replacement+" Ready at", "quarantined pod "+ns+"/"+victim.Name+" deleted")
	devenv.WaitWeb(t, w.kube, ns, 2)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := w.kube.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quarantined pod %s still exists after the snapshot", victim.Name)
		}
	}

	// The whole causal chain, as `parry trace` prints it.
	trees, err := w.stack.Journal.Incident(ctx, incident)
	if err != nil || len(trees) != 1 {
		t.Fatalf("incident %s: %d trees, %v", incident, len(trees), err)
	}
	var types []string
	var walk func(n *journal.Node)
	walk = func(n *journal.Node) {
		types = append(types, n.Type)
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(trees[0])
	for _, want := range []string{events.TypeNetworkConnect, events.TypeIncidentOpened, events.StepDone(isolate.Name), events.StepDone(snapshot.Name), events.StepDone(respawn.Name)} {
		if !slices.Contains(types, want) {
			t.Fatalf("the trace of %s lacks %s: %v", incident, want, types)
		}
	}
	if verbose {
		var hops []string
		var walkHops func(n *journal.Node)
		walkHops = func(n *journal.Node) {
			hops = append(hops, fmt.Sprintf("%s +%.1fms", n.Type, ms(n.Received.Sub(kernelTime))))
			for _, c := range n.Children {
				walkHops(c)
			}
		}
		walkHops(trees[0])
		t.Logf("incident %s, received after the kernel event: %s", incident, strings.Join(hops, ", "))
	}
	return latencies{block: iso.KernelBlockAt.Sub(kernelTime), policy: iso.PolicyAt.Sub(kernelTime), replacement: res.ReadyAt.Sub(kernelTime)}
}

// TestMinerContainedEndToEnd runs the whole response several times and
// reports p50 and p99 of kernel event → in-kernel block, → NetworkPolicy
// stored, → replacement Running.
func TestMinerContainedEndToEnd(t *testing.T) {
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	podcgroup.Listen(t, "127.0.0.1:18080")
	const rounds = 10
	var lat []latencies
	for i := range rounds {
		ns := fmt.Sprintf("shop-%d", i)
		pods := devenv.WebDeployment(t, w.kube, ns, 2)
		lat = append(lat, w.contain(t, ns, pods[0], pods[1], i == 0))
	}
	report := func(name string, pick func(latencies) time.Duration) {
		d := make([]time.Duration, len(lat))
		for i, l := range lat {
			d[i] = pick(l)
		}
		slices.Sort(d)
		t.Logf("kernel event → %-20s p50 %7.1f ms   p99 %7.1f ms   (n=%d)", name, ms(d[len(d)/2]), ms(d[(len(d)*99)/100]), len(d))
	}
	report("in-kernel block", func(l latencies) time.Duration { return l.block })
	report("NetworkPolicy stored", func(l latencies) time.Duration { return l.policy })
	report("replacement Running", func(l latencies) time.Duration { return l.replacement })
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestProtectedNamespaceIsNeverTouched: the same miner in kube-system opens
// nothing that acts on the pod. It first proves that the miner's connects
// reached the pipeline and that classify answered them, so a dead sensor,
// broker or classify fails it rather than passing it.
func TestProtectedNamespaceIsNeverTouched(t *testing.T) {
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	ctx := context.Background()
	var pod *corev1.Pod
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pod, err = w.kube.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "system-miner"},
			Spec: corev1.PodSpec{NodeName: w.env.NodeName, Containers: []corev1.Container{{Name: "app", Image: "x"}}}}, metav1.CreateOptions{})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	uid := string(pod.UID)
	miner := podcgroup.NewFor(t, uid)
	for i := range 3 {
		if code := connectFrom(t, miner, "127.0.0.1:3333"); code != 0 {
			t.Fatalf("connect %d of the kube-system miner exited %d, want 0", i, code)
		}
	}

	// The positive control: the sensor's event for the pod is journaled,
	// and classify answered it by escalating.
	w.reply(t, uid, events.TypeNetworkConnect, 10*time.Second)
	opened := w.reply(t, uid, events.TypeIncidentOpened, 10*time.Second)
	if got := events.String(opened.Event, events.ExtResponse); got != events.ResponseEscalate {
		t.Fatalf("classify answered the kube-system miner with response %q, want %q: %s", got, events.ResponseEscalate, opened.Event.Data())
	}
	incident := events.String(opened.Event, events.ExtIncident)
	// Every delivery of the incident's events has finished, so any step
	// the escalation failed to stop has answered by now.
	for _, n := range w.settled(t, incident, 10*time.Second) {
		if !strings.HasPrefix(n.Type, events.TypeSensorPrefix) && n.Type != events.TypeIncidentOpened && n.Type != events.TypeIncidentJoined {
			t.Fatalf("incident %s of a kube-system pod ran a step: %s %s", incident, n.Type, n.Event.Data())
		}
	}

	got, err := w.kube.CoreV1().Pods("kube-system").Get(ctx, "system-miner", metav1.GetOptions{})
	if err != nil || got.Labels[labels.Quarantine] != "" || len(got.OwnerReferences) != 0 || got.DeletionTimestamp != nil {
		t.Fatalf("a kube-system pod was touched: %v %+v", err, got.ObjectMeta)
	}
	nps, err := w.kube.NetworkingV1().NetworkPolicies("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing the NetworkPolicies of kube-system: %v", err)
	}
	if len(nps.Items) != 0 {
		t.Fatalf("a NetworkPolicy was written in kube-system: %v", nps.Items[0].Name)
	}
	if code := connectFrom(t, miner, "127.0.0.1:3333"); code != 0 {
		t.Fatalf("a kube-system pod was blocked in the kernel (exit %d)", code)
	}
}

// settled waits until no delivery of any event in the incident's causal
// trees is pending and returns those events.
func (w *world) settled(t *testing.T, incident string, within time.Duration) []*journal.Node {
	t.Helper()
	return w.settle(t, "incident "+incident, within, false, func() ([]*journal.Node, error) {
		return w.stack.Journal.Incident(context.Background(), incident)
	})
}

// settle waits until no delivery of the trees roots returns is pending
// (and, with atLeastOne, one is done) and returns all their events.
func (w *world) settle(t *testing.T, what string, within time.Duration, atLeastOne bool, roots func() ([]*journal.Node, error)) []*journal.Node {
	t.Helper()
	var pending []string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		trees, err := roots()
		if err != nil {
			t.Fatal(err)
		}
		var nodes []*journal.Node
		var walk func(n *journal.Node)
		walk = func(n *journal.Node) {
			nodes = append(nodes, n)
			for _, c := range n.Children {
				walk(c)
			}
		}
		for _, tr := range trees {
			walk(tr)
		}
		pending = pending[:0]
		done := 0
		for _, n := range nodes {
			for _, d := range n.Deliveries {
				if d.State == journal.Pending {
					pending = append(pending, n.Type+" → "+d.Trigger)
				} else {
					done++
				}
			}
		}
		if len(pending) == 0 && (done > 0 || !atLeastOne) {
			return nodes
		}
	}
	t.Fatalf("%s: deliveries still pending after %s: %v", what, within, pending)
	return nil
}

// TestAFleetWideBurstTripsTheBreaker: the crypto-miner playbook allows 10
// pods per 10 minutes; a fleet-wide burst beyond that is refused, not
// quarantined. The burst need only fit in the playbook's window, so its
// duration is reported, not asserted (a busy machine stretches it).
func TestAFleetWideBurstTripsTheBreaker(t *testing.T) {
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	const n = 12
	pods := devenv.WebDeployment(t, w.kube, "fleet", n)
	cgs := make([]*podcgroup.Pod, n)
	for i, p := range pods {
		cgs[i] = podcgroup.NewFor(t, string(p.UID))
	}
	cmds := make([]*exec.Cmd, n)
	for i, cg := range cgs {
		cmds[i] = cg.Command(t, os.Args[0], "-test.run=^$")
		cmds[i].Env = append(os.Environ(), "PARRY_E2E_CONNECT=127.0.0.1:3333")
	}
	start := time.Now()
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		// 13 is EPERM: a pod isolated before its own connect ran.
		var exit *exec.ExitError
		if err := c.Wait(); err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 13) {
			t.Errorf("miner %d: %v", i, err)
		}
	}
	burst := time.Since(start)
	ctx := context.Background()
	var quarantined, refused int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		quarantined, refused = 0, 0
		es, err := w.stack.Journal.Last(ctx, 5000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Type == events.StepDone(isolate.Name) && events.String(e.Event, events.ExtPodNamespace) == "fleet" {
				quarantined++
			}
			if strings.Contains(string(e.Event.Data()), "circuit breaker") && events.String(e.Event, events.ExtPodNamespace) == "fleet" {
				refused++
			}
		}
		if quarantined+refused >= n && refused > 0 {
			break
		}
	}
	if quarantined > 10 || refused == 0 {
		t.Fatalf("%d pods quarantined, %d refused by the breaker: want at most 10 and some refused", quarantined, refused)
	}
	t.Logf("burst of %d miners in %s: %d quarantined, %d refused by the circuit breaker", n, burst.Round(time.Millisecond), quarantined, refused)
}

// TestStepsOutlastAnAPIServerRestart: the API server goes away for 10 s just
// as a miner connects. The in-kernel block needs no API server; isolate,
// snapshot and respawn fail their first attempts (connection refused) and
// the broker retries them per their Triggers' delivery policy until the API
// server is back: every step completes and none is dead-lettered.
func TestStepsOutlastAnAPIServerRestart(t *testing.T) {
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	ctx := context.Background()
	pods := devenv.WebDeployment(t, w.kube, "outage", 2)
	victim := pods[0]
	miner := podcgroup.NewFor(t, string(victim.UID))

	const down = 10 * time.Second
	restarted := make(chan error, 1)
	go func() { restarted <- w.env.RestartAPIServer(ctx, down) }()
	// The positive control of the outage: the API server refuses before
	// the miner runs.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := w.kube.CoreV1().Namespaces().Get(ctx, "outage", metav1.GetOptions{}); err != nil {
			t.Logf("API server down: %v", err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server is still answering: the outage did not begin")
		}
	}
	outageBegan := time.Now()
	if code := connectFrom(t, miner, "127.0.0.1:3333"); code != 0 {
		t.Fatalf("the miner's first connect failed (%d) before any incident", code)
	}
	isolated := w.reply(t, string(victim.UID), events.StepDone(isolate.Name), 90*time.Second)
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if at := isolated.Received; at.Before(outageBegan.Add(down)) {
		t.Fatalf("isolate completed %s into a %s outage: the outage did not cover it", at.Sub(outageBegan), down)
	}
	iso := decode[isolate.Result](t, isolated.Event)
	if iso.KernelBlock != "applied" || iso.NetworkPolicy == "" || iso.PolicyAt.IsZero() {
		t.Fatalf("isolate after the outage: %+v", iso)
	}
	w.reply(t, string(victim.UID), events.StepDone(snapshot.Name), 90*time.Second)
	res := decode[respawn.Result](t, w.reply(t, string(victim.UID), events.StepDone(respawn.Name), 120*time.Second).Event)
	if res.Replacement == "" || !res.Deleted {
		t.Fatalf("respawn after the outage: %+v", res)
	}
	incident := events.String(isolated.Event, events.ExtIncident)
	for _, n := range w.settled(t, incident, 30*time.Second) {
		if strings.HasSuffix(n.Type, ".failed.v1") {
			t.Errorf("%s in the incident after the outage: %s", n.Type, n.Event.Data())
		}
	}
	t.Logf("API server down %s: isolate done %s after the outage began, respawn at %s", down,
		isolated.Received.Sub(outageBegan).Round(time.Millisecond), res.ReadyAt.Sub(outageBegan).Round(time.Millisecond))
}
