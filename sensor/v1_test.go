package sensor_test

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	osexec "os/exec"
	"path/filepath"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/internal/cgroups"
)

// TestCgroupV1Attribution: on a node whose kubelet uses cgroup v1 (cgroupfs
// driver: memory/kubepods/<qos>/pod<uid>/<id>), records are attributed by
// the v1 memory controller's cgroup, and the pods scope is applied in
// userspace.
func TestCgroupV1Attribution(t *testing.T) {
	requireKernel(t)
	m, err := cgroups.Discover("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if m.MemoryV1 == "" {
		if os.Getenv("CI") == "true" {
			t.Log("no cgroup v1 memory controller on this machine: nothing to fall back to")
		}
		t.Skip("no cgroup v1 memory controller mounted")
	}
	b := make([]byte, 48)
	rand.Read(b) // crypto/rand.Read never returns an error (it crashes instead)
	h := hex.EncodeToString(b)
	uid := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	cid := hex.EncodeToString(b[16:])
	var created []string
	dir := m.MemoryV1
	for _, c := range []string{"kubepods", "besteffort", "pod" + uid, cid} {
		dir = filepath.Join(dir, c)
		if err := os.Mkdir(dir, 0o755); err == nil {
			created = append(created, dir)
		} else if !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	defer func() {
		for i := len(created) - 1; i >= 0; i-- {
			for range 50 {
				if os.Remove(created[i]) == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	f := filepath.Join(t.TempDir(), "filters.yaml")
	if err := os.WriteFile(f, []byte("apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: pods\npodRoots: [kubepods]\nexec: {all: true, exits: true}\nconnect: {all: false, ports: [1]}\nsignals: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := newTestSink(t)
	startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: f, CgroupMode: "v1"})
	out, err := runHost("/bin/sh", "-c", "echo $$ > "+dir+"/cgroup.procs && exec /usr/bin/true")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ev := sink.wait(t, 5*time.Second, "exec event attributed by the v1 memory cgroup", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeProcessExec && ext(ev, events.ExtExe) == "/usr/bin/true" && ext(ev, events.ExtPodUID) == uid
	})
	if ext(ev, events.ExtContainerID) != cid {
		t.Errorf("containerid %q, want %q", ext(ev, events.ExtContainerID), cid)
	}
	// processes outside kubepods are filtered out in userspace
	if out, err := runHost("/usr/bin/true"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	time.Sleep(200 * time.Millisecond)
	for _, ev := range sink.all() {
		if ev.Type() == events.TypeProcessExec && ext(ev, events.ExtPodUID) == "" {
			t.Fatalf("exec outside the pods emitted: %v", ev.Extensions())
		}
	}
}

func runHost(name string, args ...string) (string, error) {
	out, err := osexec.Command(name, args...).CombinedOutput()
	return string(out), err
}
