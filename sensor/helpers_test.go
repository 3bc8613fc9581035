package sensor_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/cgroups"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/podcgroup"
)

// TestMain doubles as the workload the tests run inside pod-shaped cgroups
// (PARRY_SENSOR_HELPER selects it), so the tests need no extra binaries.
// The API's authorization tests use the shared test environment's API
// server (devenv), stopped at the end.
func TestMain(m *testing.M) {
	if mode := os.Getenv("PARRY_SENSOR_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	devenv.Main(m)
}

// requireKernel: these tests need root and the real kernel. Under CI=true
// they must run, so a missing privilege is a failure there, not a skip.
func requireKernel(t *testing.T) {
	t.Helper()
	if err := sensor.Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: the sensor tests must run: %v", err)
		}
		t.Skipf("needs a privileged process on a BTF kernel: %v", err)
	}
}

// testSink is a CloudEvents receiver on loopback.
type testSink struct {
	mu     sync.Mutex
	events []cloudevents.Event
	addr   string
	srv    *http.Server
	notify chan struct{}
}

func newTestSink(t *testing.T) *testSink {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testSink{addr: l.Addr().String(), notify: make(chan struct{}, 1)}
	s.start(l)
	t.Cleanup(s.stop)
	return s
}

// reservedSink returns a sink address with nothing listening yet.
func reservedSink(t *testing.T) *testSink {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testSink{addr: l.Addr().String(), notify: make(chan struct{}, 1)}
	l.Close()
	t.Cleanup(s.stop)
	return s
}

func (s *testSink) start(l net.Listener) {
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil || r.Header.Get("ce-id") == "" {
			http.Error(w, "want a binary-mode CloudEvent", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, *ev)
		s.mu.Unlock()
		select {
		case s.notify <- struct{}{}:
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	})}
	go s.srv.Serve(l)
}

func (s *testSink) listen(t *testing.T) {
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	s.start(l)
}

func (s *testSink) stop() {
	if s.srv != nil {
		s.srv.Close()
	}
}

func (s *testSink) url() string { return "http://" + s.addr + "/" }

func (s *testSink) all() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.events...)
}

// wait returns the first event matching pred, failing after within.
func (s *testSink) wait(t *testing.T, within time.Duration, what string, pred func(cloudevents.Event) bool) cloudevents.Event {
	t.Helper()
	deadline := time.After(within)
	for {
		for _, ev := range s.all() {
			if pred(ev) {
				return ev
			}
		}
		select {
		case <-s.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s within %s; got %d events: %s", what, within, len(s.all()), summary(s.all()))
		}
	}
}

func summary(evs []cloudevents.Event) string {
	var b strings.Builder
	for i, ev := range evs {
		if i == 30 {
			fmt.Fprintf(&b, "\n  ... %d more", len(evs)-30)
			break
		}
		fmt.Fprintf(&b, "\n  %s poduid=%v exe=%v dport=%v path=%v signal=%v", ev.Type(), ext(ev, "poduid"), ext(ev, "exe"), ext(ev, "dport"), ext(ev, "path"), ext(ev, "signal"))
	}
	return b.String()
}

func ext(ev cloudevents.Event, name string) string {
	v, _ := ev.Extensions()[name].(string) // absent: ""
	return v
}

// pod is a pod-shaped cgroup as the kubelet's systemd driver names it
// (tests/podcgroup), with the names these tests use.
type pod struct {
	*podcgroup.Pod
	uid, cid string
	dir      string // the container's cgroup directory
	podDir   string
}

func newPod(t *testing.T) *pod {
	t.Helper()
	p := podcgroup.New(t)
	return &pod{Pod: p, uid: p.UID, cid: p.ContainerID, dir: p.Dir, podDir: filepath.Dir(p.Dir)}
}

// ensurePodRoot creates kubepods.slice before a sensor starts, so the
// sensor's scope includes it from the first moment.
func ensurePodRoot(t *testing.T) {
	t.Helper()
	m, err := cgroups.Discover("/proc/self/mountinfo")
	if err != nil || m.V2 == "" {
		t.Fatalf("no cgroup2 mount: %v", err)
	}
	if err := os.Mkdir(filepath.Join(m.V2, "kubepods.slice"), 0o755); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
}

func (p *pod) run(t *testing.T, name string, args ...string) (string, error) {
	return p.Run(t, name, args...)
}

func (p *pod) command(t *testing.T, name string, args ...string) *exec.Cmd {
	return p.Command(t, name, args...)
}

// helperCmd runs this test binary as a workload in the pod.
func (p *pod) helper(t *testing.T, mode string, args ...string) *exec.Cmd {
	cmd := p.command(t, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PARRY_SENSOR_HELPER="+mode)
	return cmd
}

// filtersFile writes a SensorFilters file for the tests: pods scope below
// kubepods.slice only, so nothing else on the machine crosses.
func filtersFile(t *testing.T, extra string) string {
	y := `apiVersion: parry.dev/v1alpha1
kind: SensorFilters
scope: pods
podRoots: [kubepods.slice]
exec: {all: true, exits: true}
connect: {all: true}
files: {prefixes: [/etc/shadow, /etc/gshadow]}
signals: [setuid, setgid, ptrace, memfd, exec-memfd, unshare, setns, module]
` + extra
	f := filepath.Join(t.TempDir(), "filters.yaml")
	if err := os.WriteFile(f, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// startSensor runs a sensor until the test ends.
func startSensor(t *testing.T, cfg sensor.Config) *sensor.Sensor {
	t.Helper()
	ensurePodRoot(t)
	if cfg.RecorderAddr == "" {
		cfg.RecorderAddr = "127.0.0.1:0"
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = t.TempDir()
	}
	if cfg.Node == "" {
		cfg.Node = "test-node"
	}
	if cfg.Kubeconfig == "" {
		cfg.Kubeconfig = "" // no cluster; KUBECONFIG from the environment would be picked up
		os.Unsetenv("KUBECONFIG")
		if cfg.APIAuthn == nil {
			cfg.APIAuthn, cfg.APIAuthz = localAPIAuth(t)
		}
	}
	log := testLog(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := sensor.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		s.Close()
	})
	return s
}

// The tests call the API as testOperator, with testToken, as parry run's
// operator does: from a local token file, granted every route.
const (
	testOperator = "test:operator"
	testToken    = "0123456789abcdef0123456789abcdef-test"
)

func localAPIAuth(t *testing.T) (auth.Authenticator, auth.Authorizer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(testToken+" "+testOperator+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var all []auth.Attributes
	for _, sub := range []string{api.SubresourceBlock, api.SubresourceUnblock, api.SubresourceHistory, api.SubresourceMetrics} {
		all = append(all, sensor.APIAccess(sub, ""))
	}
	return f, auth.Static{testOperator: all}
}

// apiClient calls the API as testOperator.
func apiClient() *http.Client { return auth.WithToken(http.DefaultClient, auth.StaticToken(testToken)) }

// testLog logs to t until the test ends (goroutines that outlive a test
// must not call t.Log).
func testLog(t *testing.T) zerolog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return zerolog.New(w).Level(zerolog.InfoLevel).With().Timestamp().Logger()
}

type tlogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tlogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}
