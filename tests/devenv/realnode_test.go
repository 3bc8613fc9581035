//go:build realnode

// The real-node tests build only with -tags realnode (make cluster-test):
// they need `make cluster-tools`, root, and a minute of the machine, and
// are not part of `make test` yet (see tests/devenv/README.md).

package devenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The real node and Knative Eventing, end to end: a pod runs, logs and
// exec work, DNS and Services work, and a CloudEvent posted to a Knative
// Broker reaches a sink pod through the Trigger whose filter it matches
// (and not through the one it does not). Then the faults Knative reports.
func TestRealNodeDeliversThroughKnativeBroker(t *testing.T) {
	requireBuilt(t, Cluster)
	ctx := t.Context()
	began := time.Now()
	env, err := Start(ctx, Options{Components: Cluster, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = env.Stop()
		}
	}()
	t.Logf("cluster up in %s", time.Since(began).Round(10*time.Millisecond))
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ns := "rn-" + randomHex(4)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDefaultServiceAccount(t, cs, ns)
	kubectl := func(stdin string, args ...string) string {
		t.Helper()
		out, err := env.Kubectl(ctx, stdin, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	// A real container: Running, its output in `kubectl logs`, and a
	// command run in it by `kubectl exec`.
	kubectl(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: box, namespace: %s}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: box
    image: %s
    command: ["sh", "-c", "echo hello from a real container; exec sleep 3600"]
`, ns, env.Images["busybox"]), "apply", "-f", "-")
	kubectl("", "-n", ns, "wait", "--for=condition=Ready", "--timeout=90s", "pod/box")
	if out := kubectl("", "-n", ns, "logs", "box"); !strings.Contains(out, "hello from a real container") {
		t.Fatalf("kubectl logs box = %q, want the container's output", out)
	}
	if out := kubectl("", "-n", ns, "exec", "box", "--", "sh", "-c", "echo $((6*7)) $(hostname)"); strings.TrimSpace(out) != "42 box" {
		t.Fatalf("kubectl exec = %q, want %q", out, "42 box")
	}
	// The cluster DNS answers for Services (Knative's addresses are
	// such names), and names outside the cluster resolve to nothing.
	if out := kubectl("", "-n", ns, "exec", "box", "--", "nslookup", "kubernetes.default.svc.cluster.local"); !strings.Contains(out, "10.96.0.1") {
		t.Fatalf("nslookup kubernetes.default = %q, want 10.96.0.1", out)
	}
	if out, err := env.Kubectl(ctx, "", "-n", ns, "exec", "box", "--", "nslookup", "example.com"); err == nil && strings.Contains(out, "Address") && !strings.Contains(out, "can't resolve") {
		t.Fatalf("a name outside the cluster resolved from a pod: %q", out)
	}

	// The sink: Knative's event_display behind a Service.
	kubectl(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: sink, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: sink}}
  template:
    metadata: {labels: {app: sink}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: sink, image: %[2]s, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: sink, namespace: %[1]s}
spec:
  selector: {app: sink}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: %[1]s}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-sink, namespace: %[1]s}
spec:
  broker: default
  filter: {attributes: {type: dev.parry.devenv.test}}
  subscriber: {ref: {apiVersion: v1, kind: Service, name: sink}}
`, ns, env.Images["knative/event_display"]), "apply", "-f", "-")
	for _, o := range []struct{ resource, name string }{{"brokers", "default"}, {"triggers", "to-sink"}} {
		if err := env.WaitKnativeReady(ctx, o.resource, ns, o.name, 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := waitDeployments(ctx, cs, ns, []string{"sink"}, 90*time.Second); err != nil {
		t.Fatal(err)
	}

	post := func(id, typ string) {
		t.Helper()
		url := fmt.Sprintf("http://broker-ingress.knative-eventing.svc.cluster.local/%s/default", ns)
		var out string
		var err error
		// The ingress learns of a new Broker through an informer; a
		// 404 right after Ready is possible for a moment.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			out, err = env.Kubectl(ctx, "", "-n", ns, "exec", "box", "--", "wget", "-q", "-S", "-O-",
				"--header", "Ce-Id: "+id, "--header", "Ce-Specversion: 1.0", "--header", "Ce-Type: "+typ,
				"--header", "Ce-Source: devenv-test", "--header", "Content-Type: application/json",
				"--post-data", `{"msg":"`+id+`"}`, url)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil || !strings.Contains(out, "202") {
			t.Fatalf("POST %s to the broker: %v\n%s", id, err, out)
		}
	}
	// The control goes second: once it has arrived, the unmatched event
	// sent before it has had its chance to arrive too.
	sent := time.Now()
	post("unmatched-"+ns, "dev.parry.devenv.other")
	post("matched-"+ns, "dev.parry.devenv.test")
	var logs string
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs, "matched-"+ns); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the sink never logged event matched-%s; its log:\n%s", ns, logs)
		}
		logs, _ = env.Kubectl(ctx, "", "-n", ns, "logs", "deploy/sink")
	}
	t.Logf("event delivered %s after the POST; %s after Start began", time.Since(sent).Round(time.Millisecond), time.Since(began).Round(10*time.Millisecond))
	for _, want := range []string{"type: dev.parry.devenv.test", "source: devenv-test", `"msg": "matched-` + ns} {
		if !strings.Contains(logs, want) {
			t.Errorf("the sink's log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "unmatched-"+ns) {
		t.Errorf("an event the Trigger's filter excludes reached the sink:\n%s", logs)
	}

	// Knative's webhook refuses an invalid Trigger; the reason reaches
	// the caller.
	_, err = env.Kubectl(ctx, fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: no-broker, namespace: %s}
spec:
  subscriber: {ref: {apiVersion: v1, kind: Service, name: sink}}
`, ns), "apply", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), "admission webhook") || !strings.Contains(err.Error(), "spec.broker") {
		t.Fatalf("a Trigger without a broker: want the webhook's refusal naming spec.broker, got %v", err)
	}
	// One it admits but cannot serve: its Ready condition's reason.
	kubectl(fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: ghost, namespace: %s}
spec:
  broker: default
  subscriber: {ref: {apiVersion: v1, kind: Service, name: no-such-service}}
`, ns), "apply", "-f", "-")
	err = env.WaitKnativeReady(ctx, "triggers", ns, "ghost", 15*time.Second)
	var nr *NotReadyError
	if !errors.As(err, &nr) || nr.Reason != "Unable to get the Subscriber's URI" || !strings.Contains(nr.Message, "no-such-service") {
		t.Fatalf("a Trigger whose subscriber is missing: want NotReadyError with Knative's reason naming it, got %v", err)
	}
	t.Logf("as reported: %v", err)
	// One on a Broker that does not exist: the MT broker's controller
	// skips it (it cannot tell the Broker's class), so it never gets a
	// status; the error says so rather than timing out silently.
	kubectl(fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: orphan, namespace: %s}
spec:
  broker: no-such-broker
  subscriber: {ref: {apiVersion: v1, kind: Service, name: sink}}
`, ns), "apply", "-f", "-")
	err = env.WaitKnativeReady(ctx, "triggers", ns, "orphan", 5*time.Second)
	if !errors.As(err, &nr) || nr.Reason != "" || !strings.Contains(err.Error(), "no Knative controller reconciled it") {
		t.Fatalf("a Trigger on a missing Broker: want NotReadyError saying nothing reconciled it, got %v", err)
	}

	// Teardown leaves the host as it was.
	downBegan := time.Now()
	stopped = true
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("teardown in %s", time.Since(downBegan).Round(10*time.Millisecond))
	assertHostClean(t)
}

// assertHostClean checks that no real node is left on the machine.
func assertHostClean(t *testing.T) {
	t.Helper()
	if _, err := net.InterfaceByName(bridgeName); err == nil {
		t.Errorf("bridge %s left behind", bridgeName)
	}
	if _, err := os.Stat(hostStatePath()); err == nil {
		t.Errorf("%s left behind", hostStatePath())
	}
	tables, _ := nftTables()
	for _, tb := range tables {
		if tb == "inet "+nftTable || strings.HasSuffix(tb, " kube-proxy") {
			t.Errorf("nft table %s left behind", tb)
		}
	}
	for _, root := range cgroupRoots() {
		if _, err := os.Stat(filepath.Join(root, "kubepods")); err == nil {
			t.Errorf("cgroup %s/kubepods left behind", root)
		}
	}
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "0" {
		t.Logf("ip_forward is %s after teardown (restored to what it was before)", strings.TrimSpace(string(b)))
	}
}

// Knative that does not come up in time: Start fails within the bound,
// naming what is not available and each pod's state, and cleans up.
func TestRealNodeKnativeWaitIsBounded(t *testing.T) {
	requireBuilt(t, Cluster)
	began := time.Now()
	_, err := Start(t.Context(), Options{Components: Cluster, KnativeTimeout: 2 * time.Second})
	if err == nil {
		t.Fatal("Start succeeded although Knative's webhook cannot be ready within 2s")
	}
	t.Log(err)
	for _, want := range []string{"eventing-webhook", "not available within 2s", "pod eventing-webhook-", "created before the webhook serves"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q", want)
		}
	}
	if d := time.Since(began); d > 2*time.Minute {
		t.Errorf("Start took %s to give up", d)
	}
	assertHostClean(t)
}

// A containerd that will not start: Start fails naming it, with its log
// tail, and the host is left as it was.
func TestRealNodeContainerdFailureShowsLog(t *testing.T) {
	requireBuilt(t, Etcd|APIServer|ControllerManager|Scheduler|RealNode)
	fake := filepath.Join(t.TempDir(), "containerd")
	script := "#!/bin/sh\necho 'containerd: simulated: failed to load plugin io.containerd.grpc.v1.cri' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	_, err := Start(t.Context(), Options{Components: Etcd | APIServer | ControllerManager | Scheduler | RealNode, Containerd: fake, ReadyTimeout: 20 * time.Second})
	if err == nil {
		t.Fatal("Start succeeded with a containerd that exits at once")
	}
	t.Log(err)
	for _, want := range []string{"containerd did not start", "simulated: failed to load plugin", "containerd.log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	assertHostClean(t)
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(fwd) {
		t.Errorf("ip_forward %q after a failed start, was %q", now, fwd)
	}
}

// Stale host state (a real-node run whose owner was SIGKILLed) is cleaned
// by `devenv down` of its directory: bridge and tables gone.
func TestRealNodeCrashIsCleanedByDown(t *testing.T) {
	requireBuilt(t, Etcd|APIServer|ControllerManager|Scheduler|RealNode)
	dir := envDir(t)
	// What a run leaves when it dies right after creating its network.
	e := &Env{Dir: dir, opts: Options{Logf: t.Logf}}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	// No reaper: this run "dies" by fiat, not by a signal a reaper sees.
	reapable.Store(false)
	defer reapable.Store(true)
	if err := e.writeState(); err != nil {
		t.Fatal(err)
	}
	if err := e.prepareRealNode(); err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := gone.Process.Pid
	e.host.Owner = dead
	if err := writeHostState(e.host); err != nil {
		t.Fatal(err)
	}
	e.hostLockFile.Close() // as the kernel does when the owner dies
	// The control: the crash's leftovers exist before the clean-up.
	if _, err := net.InterfaceByName(bridgeName); err != nil {
		t.Fatalf("the simulated crash left no bridge: %v", err)
	}
	// The directory's own state names a dead owner too.
	if err := os.WriteFile(filepath.Join(dir, stateFile), fmt.Appendf(nil, `{"owner": %d, "ownerExe": %q, "procs": []}`, dead, e.host.OwnerExe), 0o644); err != nil {
		t.Fatal(err)
	}
	ended, err := CleanStale(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ended) == 0 || !strings.Contains(strings.Join(ended, ","), "real node") {
		t.Errorf("CleanStale reported %v, want the real node's leftovers", ended)
	}
	assertHostClean(t)
}

// SIGKILLing the owner of a real node with a running pod leaves nothing:
// the servers die of their parent-death signal, the reaper ends the
// container and its shim and restores the host.
func TestRealNodeKilledOwnerLeavesNothing(t *testing.T) {
	requireBuilt(t, Etcd|APIServer|ControllerManager|Scheduler|RealNode)
	dir := envDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRealNodeOwner$", "-test.v")
	cmd.Env = append(os.Environ(), "PARRY_DEVENV_HELPER_DIR="+dir)
	logPath := filepath.Join(t.TempDir(), "helper.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	marker := filepath.Join(dir, "pod-running")
	for deadline := time.Now().Add(4 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("the helper exited before its pod ran; its log:\n%s", logTail(logPath, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper did not get a pod running; its log:\n%s", logTail(logPath, 40))
		}
	}
	// The control: a container runs under kubepods before the kill.
	if !cgroupHasProcs("kubepods") {
		t.Fatal("no process in the kubepods cgroups while the helper's pod runs")
	}
	st, err := readState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := os.Stat(hostStatePath())
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reaper did not clean the host within 30s; helper log:\n%s\nreaper log:\n%s", logTail(logPath, 20), logTail(filepath.Join(dir, "logs", "reaper.log"), 20))
		}
	}
	for _, p := range st.Procs {
		if processAlive(p.PID, p.Exe) || groupAlive(p.PID) {
			t.Errorf("%s (pid %d) survived its owner's SIGKILL", p.Name, p.PID)
		}
	}
	if cgroupHasProcs("kubepods") {
		t.Error("a container process survived its owner's SIGKILL")
	}
	assertHostClean(t)
	t.Logf("reaper:\n%s", logTail(filepath.Join(dir, "logs", "reaper.log"), 10))
}

// TestHelperRealNodeOwner is the process TestRealNodeKilledOwnerLeavesNothing kills.
func TestHelperRealNodeOwner(t *testing.T) {
	dir := os.Getenv("PARRY_DEVENV_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestRealNodeKilledOwnerLeavesNothing")
	}
	env, err := Start(context.Background(), Options{Dir: dir, Components: Etcd | APIServer | ControllerManager | Scheduler | RealNode, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	waitDefaultServiceAccount(t, kubernetes.NewForConfigOrDie(env.RESTConfig()), "default")
	if _, err := env.Kubectl(context.Background(), fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: victim, namespace: default}
spec:
  containers: [{name: c, image: %s, command: [sleep, "3600"]}]
`, env.Images["busybox"]), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Kubectl(context.Background(), "", "wait", "--for=condition=Ready", "--timeout=120s", "pod/victim"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pod-running"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Minute) // until SIGKILLed
}

func cgroupHasProcs(name string) bool {
	found := false
	for _, root := range cgroupRoots() {
		_ = filepath.WalkDir(filepath.Join(root, name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs")); len(strings.TrimSpace(string(b))) > 0 {
					found = true
				}
			}
			return nil
		})
	}
	return found
}

// waitDefaultServiceAccount waits for the controller-manager to create the
// namespace's default ServiceAccount: until then every pod is refused.
func waitDefaultServiceAccount(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(t.Context(), "default", metav1.GetOptions{}); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("no default ServiceAccount in %s after 30s: %v", ns, err)
		}
	}
}
