package recorder

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/cgroups"
)

func ident(id uint64, pod string) *attrib.Identity {
	return &attrib.Identity{CgroupID: id, CgroupPath: "/x", PodRef: cgroups.PodRef{PodUID: pod, ContainerID: "c"}}
}

func TestPodHistory(t *testing.T) {
	r := New(Options{TTL: time.Minute})
	t0 := time.Unix(1700000000, 0)
	id := ident(1, "pod-a")
	r.Add(id, api.RecordedEvent{Time: t0, Kind: "exec", PID: 10, PPID: 1, Exe: "/bin/sh", Args: []string{"sh"}})
	r.Add(id, api.RecordedEvent{Time: t0.Add(time.Second), Kind: "open", PID: 10, Path: "/etc/shadow"})
	for i := range 100 {
		r.Add(id, api.RecordedEvent{Time: t0.Add(2 * time.Second), Kind: "connect", PID: 10, DAddr: netip.MustParseAddr("10.0.0.1"), DPort: 4444, Proto: "tcp", Blocked: i%2 == 0})
	}
	r.Add(id, api.RecordedEvent{Time: t0.Add(3 * time.Second), Kind: "exit", PID: 10, Exit: api.RecordedExit{Status: 256, Start: t0}})
	r.Add(ident(2, "pod-b"), api.RecordedEvent{Time: t0, Kind: "exec", PID: 20})

	recs, ok := r.Pod("pod-a")
	if !ok || len(recs) != 1 {
		t.Fatalf("Pod: %v %d", ok, len(recs))
	}
	c := recs[0]
	if len(c.Events) != 103 || c.Events[0].Kind != "exec" || c.Events[102].Kind != "exit" {
		t.Fatalf("events %d", len(c.Events))
	}
	if len(c.Processes) != 1 || c.Processes[0].ExitStatus == nil || *c.Processes[0].ExitStatus != 256 || c.Processes[0].Exe != "/bin/sh" {
		t.Fatalf("processes %+v", c.Processes)
	}
	if len(c.Connections) != 1 || c.Connections[0].Count != 100 || c.Connections[0].Blocked != 50 {
		t.Fatalf("connections %+v", c.Connections)
	}
	if len(c.Files) != 1 || c.Files[0].Path != "/etc/shadow" {
		t.Fatalf("files %+v", c.Files)
	}
	if ps := r.Pods(); len(ps) != 2 {
		t.Fatalf("pods %+v", ps)
	}
}

func TestBoundsAndTTL(t *testing.T) {
	const budget = 40 << 10 // three cgroups would hold about 57 KiB
	r := New(Options{TTL: time.Minute, PerCgroup: 50, MaxBytes: budget, MaxRows: 10})
	t0 := time.Unix(1700000000, 0)
	for i := range 1000 {
		r.Add(ident(1, "storm"), api.RecordedEvent{Time: t0.Add(time.Duration(i) * time.Millisecond), Kind: "connect", DPort: uint16(i), Proto: "udp"})
	}
	for i := range 60 {
		r.Add(ident(2, "quiet"), api.RecordedEvent{Time: t0, Kind: "exec", PID: uint32(i)})
		r.Add(ident(3, "other"), api.RecordedEvent{Time: t0, Kind: "exec", PID: uint32(i)})
	}
	st := r.Stats()
	if st.Bytes > budget || st.Evicted == 0 {
		t.Fatalf("holds %d bytes of a %d budget, evicted %d", st.Bytes, budget, st.Evicted)
	}
	storm, ok := r.Pod("storm")
	if !ok {
		t.Fatal("no history of the storm pod")
	}
	if len(storm[0].Events) > 50 || storm[0].Evicted == 0 || storm[0].Events[len(storm[0].Events)-1].DPort != 999%65536 {
		t.Fatalf("storm ring: %d events, evicted %d", len(storm[0].Events), storm[0].Evicted)
	}
	if len(storm[0].Connections) == 0 || len(storm[0].Connections) > 10 || storm[0].Overflowed == 0 {
		t.Fatalf("connections table unbounded or overflow uncounted: %d, %d", len(storm[0].Connections), storm[0].Overflowed)
	}
	quiet, ok := r.Pod("quiet")
	if !ok || len(quiet[0].Events) == 0 {
		t.Fatal("a storm in one pod erased another pod's history")
	}
	r.Sweep(t0.Add(2 * time.Minute))
	if st := r.Stats(); st.Events != 0 || st.Cgroups != 0 || st.Pods != 0 || st.Bytes != 0 {
		t.Fatalf("after TTL: %+v", st)
	}
}

// TestMemoryBound fills the recorder from many cgroups with exec events of
// unique arguments (a build) and connects: what it accounts stays under
// MaxBytes, and the heap it really holds is no more than that.
func TestMemoryBound(t *testing.T) {
	const budget = 4 << 20
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	r := New(Options{TTL: time.Hour, MaxBytes: budget})
	t0 := time.Unix(1700000000, 0)
	for c := range 64 {
		id := ident(uint64(c+1), fmt.Sprintf("pod-%d", c))
		for i := range 1500 {
			pid := uint32(c*100000 + i)
			r.Add(id, api.RecordedEvent{Time: t0, Kind: "exec", PID: pid, Comm: "compile", Exe: "/usr/local/go/pkg/tool/linux_amd64/compile",
				Args: []string{"compile", "-o", fmt.Sprintf("/tmp/go-build%d/b%03d/_pkg_.a", c, i), "-p", fmt.Sprintf("example.com/pkg%d", i)}})
			r.Add(id, api.RecordedEvent{Time: t0, Kind: "exit", PID: pid})
			r.Add(id, api.RecordedEvent{Time: t0, Kind: "connect", PID: pid, DAddr: netip.AddrFrom4([4]byte{10, 0, byte(c), byte(i)}), DPort: 443, Proto: "tcp"})
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	st := r.Stats()
	heap := int(m1.HeapAlloc) - int(m0.HeapAlloc)
	t.Logf("%d events in %d cgroups: accounted %d bytes, heap %d bytes", st.Events, st.Cgroups, st.Bytes, heap)
	if st.Bytes > budget || st.Evicted == 0 {
		t.Errorf("accounted %d bytes of a %d budget (evicted %d)", st.Bytes, budget, st.Evicted)
	}
	if heap > budget {
		t.Errorf("the recorder holds %d bytes of heap; its budget is %d", heap, budget)
	}
	runtime.KeepAlive(r)
}

// TestArgsAreRedacted: the recorder keeps no secret of an exec's argv, in
// its events or its process table, with the default or extended rules.
func TestArgsAreRedacted(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	for _, r := range []*Recorder{New(Options{}), New(Options{Redact: redact.New("pin")})} {
		r.Add(ident(1, "pod-a"), api.RecordedEvent{Time: t0, Kind: "exec", PID: 10, Exe: "/bin/app", Args: []string{"app", "--token=s3cr3t", "https://u:hunter2@h", "--pin", "1234"}})
		recs, _ := r.Pod("pod-a")
		data, err := json.Marshal(recs)
		if err != nil {
			t.Fatal(err)
		}
		if s := string(data); strings.Contains(s, "s3cr3t") || strings.Contains(s, "hunter2") || !strings.Contains(s, redact.Value("s3cr3t")) {
			t.Fatalf("history keeps a secret: %s", s)
		}
		if r.o.Redact != nil && strings.Contains(string(data), "1234") {
			t.Fatalf("extended rules not applied: %s", data)
		}
	}
}
