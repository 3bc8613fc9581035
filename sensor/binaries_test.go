package sensor_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/client"
)

// TestPodBinaries: GET /v1/pods/{uid}/binaries hashes the binary a live
// process of the pod runs through /proc/<pid>/exe (the sensor sees the
// host's PIDs), says why for one only an exited process ran, and answers
// 404 for a pod it holds nothing of, as GET /v1/pods/{uid} does.
func TestPodBinaries(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""), HealthInterval: time.Hour})
	p := newPod(t)

	// a live process: a copy of sleep under a name of its own
	src, err := os.ReadFile("/usr/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pod-sleep")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(src)
	want := "sha256:" + hex.EncodeToString(sum[:])
	live := p.command(t, bin, "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })
	// an exited one
	if out, err := p.run(t, "/usr/bin/true"); err != nil {
		t.Fatalf("true: %v: %s", err, out)
	}

	c := client.New("http://"+s.RecorderAddr(), apiClient())
	var got api.Binaries
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err = c.PodBinaries(t.Context(), p.uid)
		if err == nil && strings.HasPrefix(got[bin], "sha256:") && got["/usr/bin/true"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("binaries of the pod: %v %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid := live.Process.Pid; got[bin] != want+" (/proc/"+strconv.Itoa(pid)+"/exe)" {
		t.Errorf("%s: %q, want %s (/proc/%d/exe)", bin, got[bin], want, pid)
	}
	if !strings.HasPrefix(got["/usr/bin/true"], "unreadable: ") || !strings.Contains(got["/usr/bin/true"], "exited") {
		t.Errorf("/usr/bin/true (exited): %q", got["/usr/bin/true"])
	}

	// unknown pod: 404 as for its history, and ErrNoHistory from the client
	resp, err := apiClient().Get("http://" + s.RecorderAddr() + api.BinariesPath("nope"))
	if err != nil {
		t.Fatal(err)
	}
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(e.Error, "nope") {
		t.Errorf("unknown pod: %d %q", resp.StatusCode, e.Error)
	}
	if _, err := c.PodBinaries(t.Context(), "nope"); !errors.Is(err, client.ErrNoHistory) {
		t.Errorf("client, unknown pod: %v", err)
	}
}
