package snapshot_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
)

// fakeSensor serves one pod history.
func fakeSensor(t *testing.T, h api.PodHistory) step.SensorLocator {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != api.PodPath(h.PodUID) {
			http.NotFound(w, r)
			return
		}
		if err := json.NewEncoder(w).Encode(h); err != nil {
			t.Error(err)
		}
	}))
	t.Cleanup(srv.Close)
	return step.SensorAt(strings.TrimPrefix(srv.URL, "http://"), srv.Client())
}

// offlineStep is the step without a cluster, with the sensor given.
func offlineStep(t *testing.T, state string, sensors step.SensorLocator) events.Handler {
	t.Helper()
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Sensors: sensors, Playbooks: playbooks{}, StateDir: state, Log: zerolog.Nop()})
	must(t, err)
	return steptest.Sealed(h)
}

func snap(t *testing.T, handle events.Handler, incident, uid string) (cloudevents.Event, snapshot.Result) {
	t.Helper()
	reply, err := handle(context.Background(), incidentEvent(t, incident, uid))
	must(t, err)
	var res snapshot.Result
	if reply.Type() == events.StepDone(snapshot.Name) {
		must(t, json.Unmarshal(reply.Data(), &res))
	}
	return *reply, res
}

func incidentEvent(t *testing.T, id, uid string) cloudevents.Event {
	return incident(t, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: typesUID(uid)}}, id)
}

// filesUnder lists every file below dir.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	must(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	}))
	return out
}

// TestIDsThatLeaveTheStoreAreRefused: an incident id or pod UID with ".."
// or "/" gets a failed reply naming it, and nothing is written outside
// the evidence store.
func TestIDsThatLeaveTheStoreAreRefused(t *testing.T) {
	top := t.TempDir()
	state := filepath.Join(top, "a", "b")
	handle := offlineStep(t, state, nil)
	for _, c := range [][2]string{
		{"../../x", "0000-a"},
		{"..", ".."},
		{"inc-1", "a/../../../b"},
		{"inc-1", "/etc"},
		{"inc-1", "."},
		{"inc-1", "x\x00y"},
		{strings.Repeat("../", 100), "0000-a"},
	} {
		reply, _ := snap(t, handle, c[0], c[1])
		if reply.Type() != events.StepFailed(snapshot.Name) {
			t.Errorf("incident %q pod %q: %s %s, want failed", c[0], c[1], reply.Type(), reply.Data())
			continue
		}
		bad := c[0]
		if snapshot.CheckID("incident id", bad) == nil {
			bad = c[1]
		}
		if len(bad) > 40 {
			bad = bad[:40]
		}
		// the reason quotes the id Go's way, and the reply is JSON
		quoted := strconv.Quote(bad)
		if q, _ := json.Marshal(quoted[1 : len(quoted)-1]); !strings.Contains(string(reply.Data()), strings.Trim(string(q), `"`)) {
			t.Errorf("the failed reply does not name %q: %s", bad, reply.Data())
		}
	}
	for _, f := range filesUnder(t, top) {
		if !strings.HasPrefix(f, filepath.Join(state, snapshot.KeyFile)) && !strings.HasPrefix(f, filepath.Join(state, snapshot.PublicKeyFile)) {
			t.Errorf("written: %s", f)
		}
	}
}

// TestBundleIsSignedAndVerified: a bundle verifies with the step's public
// key (from the reply, or evidence.pub); a changed file, an added file, a
// re-hashed manifest and another key each fail, naming what is wrong.
func TestBundleIsSignedAndVerified(t *testing.T) {
	state := t.TempDir()
	uid := "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	hist := api.PodHistory{PodUID: uid, Node: "n1", Cgroups: []api.CgroupRecord{{ID: 7, PodUID: uid,
		Processes: []api.RecordedProcess{{PID: 1 << 30, Exe: "/usr/bin/app", Args: []string{"app", "--token=s3cr3t"}}},
		Events:    []api.RecordedEvent{{Kind: "exec", PID: 1 << 30, Exe: "/usr/bin/app", Args: []string{"app", "--token=s3cr3t"}}}}}}
	handle := offlineStep(t, state, fakeSensor(t, hist))
	reply, res := snap(t, handle, "inc-signed", uid)
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	info, err := os.Stat(filepath.Join(state, snapshot.KeyFile))
	must(t, err)
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", info.Mode())
	}
	pub, err := snapshot.ReadPublicKey(filepath.Join(state, snapshot.PublicKeyFile))
	must(t, err)
	if base64.StdEncoding.EncodeToString(pub) != res.PublicKey || snapshot.Fingerprint(pub) != res.KeyFingerprint {
		t.Fatalf("reply names key %s %s, evidence.pub is %s", res.PublicKey, res.KeyFingerprint, snapshot.Fingerprint(pub))
	}
	c, err := snapshot.VerifySigned(res.Bundle, pub)
	if err != nil || !c.Trusted || c.ManifestSHA256 != res.ManifestSHA256 {
		t.Fatalf("valid bundle: %+v %v", c, err)
	}
	fr, err := os.ReadFile(filepath.Join(res.Bundle, "flight-recorder.json"))
	must(t, err)
	if strings.Contains(string(fr), "s3cr3t") || !strings.Contains(string(fr), redact.Value("s3cr3t")) {
		t.Fatalf("the flight recorder keeps a secret: %s", fr)
	}

	// a redelivery replies as the first time and keeps the signature
	again, res2 := snap(t, handle, "inc-signed", uid)
	if again.ID() != reply.ID() || res2.ManifestSHA256 != res.ManifestSHA256 {
		t.Fatalf("redelivery: %s %+v", again.Data(), res2)
	}

	_, other, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	if _, err := snapshot.VerifySigned(res.Bundle, other.Public().(ed25519.PublicKey)); err == nil || !strings.Contains(err.Error(), "not by the trusted key") {
		t.Fatalf("another key: %v", err)
	}

	tamper := func(name string, data []byte) {
		p := filepath.Join(res.Bundle, name)
		os.Chmod(p, 0o600) // absent for an added file
		must(t, os.WriteFile(p, data, 0o600))
	}
	tamper("binaries.json", []byte(`{}`))
	if _, err := snapshot.VerifySigned(res.Bundle, pub); err == nil || !strings.Contains(err.Error(), "binaries.json") {
		t.Fatalf("changed file: %v", err)
	}
	tamper("extra.txt", []byte("planted"))
	if _, err := snapshot.VerifySigned(res.Bundle, pub); err == nil || !strings.Contains(err.Error(), "extra.txt: not in the manifest") {
		t.Fatalf("added file: %v", err)
	}
	must(t, os.Remove(filepath.Join(res.Bundle, "extra.txt")))

	// re-hashing the changed file into the manifest breaks the signature
	var m snapshot.Manifest
	data, err := os.ReadFile(filepath.Join(res.Bundle, snapshot.ManifestFile))
	must(t, err)
	must(t, json.Unmarshal(data, &m))
	m.Files["binaries.json"] = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" // sha256("{}")
	data, err = json.Marshal(m)
	must(t, err)
	tamper(snapshot.ManifestFile, data)
	_, err = snapshot.VerifySigned(res.Bundle, pub)
	if err == nil || !strings.Contains(err.Error(), "signature does not match") || strings.Contains(err.Error(), "binaries.json") {
		t.Fatalf("re-hashed manifest: %v", err)
	}
}

// TestBinaryHashesAreThePods: binaries are hashed through /proc/<host pid>
// only while that PID is still the pod's process running that exe; an
// exited process and a PID that belongs to another process are never
// hashed from this process's own filesystem.
func TestBinaryHashesAreThePods(t *testing.T) {
	state := t.TempDir()
	// the pod UID of the positive case is a component of this test's own
	// cgroup path, as a kubelet's cgroup path holds the pod's UID
	podUID := ""
	cg, err := os.ReadFile("/proc/self/cgroup")
	must(t, err)
	for _, line := range strings.Split(string(cg), "\n") {
		for _, part := range strings.Split(line, "/") {
			if len(part) >= 16 && len(part) > len(podUID) && strings.Trim(part, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == "" {
				podUID = part
			}
		}
	}
	// a live process: a copy of sleep
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	bin := filepath.Join(t.TempDir(), "pod-sleep")
	src, err := os.ReadFile(sleep)
	must(t, err)
	must(t, os.WriteFile(bin, src, 0o755))
	live := exec.Command(bin, "60")
	must(t, live.Start())
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })
	// an exited process whose exe, /bin/sh, exists in this filesystem too
	gone := exec.Command("/bin/sh", "-c", "exit 0")
	must(t, gone.Run())
	self, err := os.Executable()
	must(t, err)

	check := func(uid string, procs []api.RecordedProcess) map[string]string {
		t.Helper()
		hist := api.PodHistory{PodUID: uid, Cgroups: []api.CgroupRecord{{PodUID: uid, Processes: procs}}}
		reply, res := snap(t, offlineStep(t, state, fakeSensor(t, hist)), "inc-hash", uid)
		if reply.Type() != events.StepDone(snapshot.Name) {
			t.Fatalf("%s %s", reply.Type(), reply.Data())
		}
		var hashes map[string]string
		data, err := os.ReadFile(filepath.Join(res.Bundle, "binaries.json"))
		must(t, err)
		must(t, json.Unmarshal(data, &hashes))
		return hashes
	}
	h := check("0000-not-this-pod", []api.RecordedProcess{
		{PID: uint32(gone.Process.Pid), Exe: "/bin/sh"},
		{PID: uint32(os.Getpid()), Exe: self},
	})
	if !strings.HasPrefix(h["/bin/sh"], "unreadable: process") || !strings.Contains(h["/bin/sh"], "exited") {
		t.Errorf("exited process hashed from this filesystem: %q", h["/bin/sh"])
	}
	if !strings.HasPrefix(h[self], "unreadable: PID") {
		t.Errorf("another pod's process hashed: %q", h[self])
	}

	if podUID == "" {
		t.Skipf("this test's cgroup path (%q) has no component to stand for a pod UID", cg)
	}
	h = check(podUID, []api.RecordedProcess{{PID: uint32(live.Process.Pid), Exe: bin}})
	f, err := os.Open(bin)
	must(t, err)
	defer f.Close()
	want := sha256Hex(t, f)
	if got := h[bin]; got != "sha256:"+want+" (/proc/"+itoa(live.Process.Pid)+"/exe)" {
		t.Errorf("live process of the pod: %q, want sha256:%s", got, want)
	}
}

func typesUID(s string) types.UID { return types.UID(s) }

func itoa(n int) string { return strconv.Itoa(n) }

func sha256Hex(t *testing.T, r io.Reader) string {
	t.Helper()
	h := sha256.New()
	_, err := io.Copy(h, r)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// TestPodSecretsAreRedacted: the bundle's pod.json keeps no value of an
// environment variable named like a secret, nor a token in a container's
// arguments, nor the last-applied copy of the spec; other values stay.
func TestPodSecretsAreRedacted(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	ns := "evidence-redact"
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(t, err)
	// the pod needs the namespace's default ServiceAccount, which the
	// controller manager creates
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-client", Annotations: map[string]string{
			"kubectl.kubernetes.io/last-applied-configuration": `{"spec":{"containers":[{"env":[{"name":"DB_PASSWORD","value":"pa55w0rd-xyz"}]}]}}`}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1",
			Args: []string{"--api-token", "tok-9f8e7d"},
			Env: []corev1.EnvVar{
				{Name: "DB_PASSWORD", Value: "pa55w0rd-xyz"},
				{Name: "DATABASE_URL", Value: "postgres://app:urlpass-123@db/app"},
				{Name: "LOG_LEVEL", Value: "debug"},
			}}}},
	}, metav1.CreateOptions{})
	must(t, err)
	handle := newStep(t, cs, metadata.NewForConfigOrDie(env.RESTConfig()), t.TempDir())
	reply, err := handle(ctx, incident(t, *pod, "inc-redact"))
	must(t, err)
	var res snapshot.Result
	must(t, json.Unmarshal(reply.Data(), &res))
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	data, err := os.ReadFile(filepath.Join(res.Bundle, "pod.json"))
	must(t, err)
	s := string(data)
	for _, secret := range []string{"pa55w0rd-xyz", "urlpass-123", "tok-9f8e7d"} {
		if strings.Contains(s, secret) {
			t.Errorf("pod.json keeps %q", secret)
		}
	}
	for _, kept := range []string{redact.Value("pa55w0rd-xyz"), "postgres://app:" + redact.Value("urlpass-123") + "@db/app", `"debug"`, redact.Value("tok-9f8e7d")} {
		if !strings.Contains(s, kept) {
			t.Errorf("pod.json lacks %s", kept)
		}
	}
	if _, err := snapshot.Verify(res.Bundle); err != nil {
		t.Fatal(err)
	}
}

// TestRedactNamesFile: names in the state directory's redact-names file
// extend the rules the bundle is redacted with.
func TestRedactNamesFile(t *testing.T) {
	state := t.TempDir()
	must(t, os.WriteFile(filepath.Join(state, snapshot.RedactNamesFile), []byte("# site names\ndsn, pin\n"), 0o644))
	uid := "0000-names"
	hist := api.PodHistory{PodUID: uid, Cgroups: []api.CgroupRecord{{PodUID: uid,
		Processes: []api.RecordedProcess{{PID: 1 << 30, Exe: "/usr/bin/app", Args: []string{"app", "--pin", "8642", "--dsn=host-x"}}}}}}
	reply, res := snap(t, offlineStep(t, state, fakeSensor(t, hist)), "inc-names", uid)
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	fr, err := os.ReadFile(filepath.Join(res.Bundle, "flight-recorder.json"))
	must(t, err)
	if strings.Contains(string(fr), "8642") || strings.Contains(string(fr), "host-x") || !strings.Contains(string(fr), redact.Value("8642")) {
		t.Fatalf("extra names not applied: %s", fr)
	}
}

// TestBinaryHashesFromSensor: with a sensor that serves the pod's binaries
// (GET /v1/pods/{uid}/binaries), binaries.json is its answer, not hashes
// through this process's /proc (a snapshot pod in a cluster has no hostPID).
func TestBinaryHashesFromSensor(t *testing.T) {
	uid := "0000-sensor-hashes"
	hist := api.PodHistory{PodUID: uid, Cgroups: []api.CgroupRecord{{PodUID: uid, Processes: []api.RecordedProcess{
		{PID: uint32(os.Getpid()), Exe: "/usr/bin/app"},
	}}}}
	bins := api.Binaries{"/usr/bin/app": "sha256:" + strings.Repeat("ab", 32) + " (/proc/4242/exe)"}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch r.URL.Path {
		case api.PodPath(uid):
			v = hist
		case api.BinariesPath(uid):
			v = bins
		default:
			http.NotFound(w, r)
			return
		}
		must(t, json.NewEncoder(w).Encode(v))
	}))
	t.Cleanup(srv.Close)
	reply, res := snap(t, offlineStep(t, t.TempDir(), step.SensorAt(strings.TrimPrefix(srv.URL, "http://"), srv.Client())), "inc-sensor-hash", uid)
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	data, err := os.ReadFile(filepath.Join(res.Bundle, "binaries.json"))
	must(t, err)
	var got api.Binaries
	must(t, json.Unmarshal(data, &got))
	if len(got) != 1 || got["/usr/bin/app"] != bins["/usr/bin/app"] {
		t.Errorf("binaries.json %v, want the sensor's %v", got, bins)
	}
}
