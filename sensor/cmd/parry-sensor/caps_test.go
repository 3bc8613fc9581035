package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// sensorCaps reads the capabilities config/600-sensor.yaml gives the sensor
// container, and checks it is not privileged.
func sensorCaps(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "config", "600-sensor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							SecurityContext struct {
								Privileged   *bool
								Capabilities struct{ Add, Drop []string }
							} `yaml:"securityContext"`
						}
					}
				}
			}
		}
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("config/600-sensor.yaml has no DaemonSet: %v", err)
		}
		if doc.Kind != "DaemonSet" {
			continue
		}
		sc := doc.Spec.Template.Spec.Containers[0].SecurityContext
		if sc.Privileged != nil && *sc.Privileged {
			t.Fatal("the sensor container is privileged")
		}
		if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || len(sc.Capabilities.Add) == 0 {
			t.Fatalf("the sensor container drops %v and adds %v, want ALL dropped and named capabilities added", sc.Capabilities.Drop, sc.Capabilities.Add)
		}
		return sc.Capabilities.Add
	}
}

type run struct {
	inactive []string // hooks that did not load or attach
	events   []string // CloudEvents bodies that name the marker
}

// runSensor runs parry-sensor (with setpriv's bounding set caps when caps
// is not nil, as uid 0 like the container) until a marker binary, executed
// as uid 65534, has been seen or 20 s have passed.
func runSensor(t *testing.T, bin string, caps []string, marker string) run {
	t.Helper()
	var mu sync.Mutex
	var r run
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if bytes.Contains(b, []byte(marker)) {
			mu.Lock()
			r.events = append(r.events, req.Header.Get("Ce-Type"))
			mu.Unlock()
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sink.Close()
	filters := filepath.Join(t.TempDir(), "filters.yaml")
	if err := os.WriteFile(filters, []byte("apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nexec: {all: true, exits: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{bin, "--filters", filters, "--recorder-listen", "-", "--spool-dir", "-", "--sink", sink.URL, "--coalesce-window", "-1s"}
	if caps != nil {
		set := "-all"
		for _, c := range caps {
			set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		args = append([]string{"setpriv", "--bounding-set", set, "--inh-caps", "-all", "--"}, args...)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	logs, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(logs)
		once := sync.Once{}
		for sc.Scan() {
			var l struct{ Message, Hook string }
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch l.Message {
			case "hook not active":
				mu.Lock()
				r.inactive = append(r.inactive, l.Hook)
				mu.Unlock()
			case "sensor running":
				once.Do(func() { close(running) })
			}
		}
	}()
	select {
	case <-running:
	case <-done:
		t.Fatalf("the sensor (caps %v) exited before it ran", caps)
	case <-ctx.Done():
		t.Fatalf("the sensor (caps %v) did not run in 30 s", caps)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, err := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", marker).CombinedOutput(); err != nil {
			t.Fatalf("marker: %v %s", err, out)
		}
		mu.Lock()
		n := len(r.events)
		mu.Unlock()
		if n > 0 {
			time.Sleep(time.Second)
			break
		}
	}
	_ = cmd.Process.Signal(os.Interrupt)
	<-done
	_ = cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(r.inactive)
	return r
}

// The sensor needs exactly the capabilities config/600-sensor.yaml names,
// not privileged: with only them (as uid 0, the container's user) every
// hook that loads and attaches for a fully privileged root loads and
// attaches, and a process of another user is seen exec and exit.
func TestSensorRunsWithItsNamedCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	caps := sensorCaps(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "parry-sensor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v %s", err, out)
	}
	marker := filepath.Join(dir, "caps-marker")
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil { // for uid 65534
			t.Fatal(err)
		}
	}
	full := runSensor(t, bin, nil, marker)
	if len(full.events) == 0 {
		t.Skipf("the sensor with every capability saw no exec here (inactive hooks %v)", full.inactive)
	}
	named := runSensor(t, bin, caps, marker)
	t.Logf("caps %v: inactive hooks %v (fully privileged: %v), marker events %v", caps, named.inactive, full.inactive, named.events)
	if !slices.Equal(named.inactive, full.inactive) {
		t.Errorf("with %v hooks %v are not active, with every capability %v", caps, named.inactive, full.inactive)
	}
	if !slices.Contains(named.events, "dev.parry.sensor.process.exec.v1") || !slices.Contains(named.events, "dev.parry.sensor.process.exit.v1") {
		t.Errorf("with %v the marker's exec and exit were not seen: %v", caps, named.events)
	}
}
