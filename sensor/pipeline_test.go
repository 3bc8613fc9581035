package sensor

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/filters"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/recorder"
	"parry.dev/parry/sensor/internal/wire"
)

// Cgroup 7 of the kernel-less pipelines is this pod's container.
const (
	testCgroupPath = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6.slice/cri-containerd-4f3e2d1c0b0a09080706050403020100ffeeddccbbaa99887766554433221100.scope"
	testPodUID     = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	testContainer  = "4f3e2d1c0b0a09080706050403020100ffeeddccbbaa99887766554433221100"
)

type pathRes map[uint64]string

func (p pathRes) Path(id uint64) (string, error) { return p[id], nil }

// testPipeline is the hot path without a kernel: cgroup 7 resolves to a
// pod's container, pods answers pod lookups (nil: no cluster) and sink
// takes the events (nil: the recorder only).
func testPipeline(cfg Config, pods attrib.PodSource, sink eventSink) *pipeline {
	if cfg.Node == "" {
		cfg.Node = "bench"
	}
	cfg.RecorderAddr, cfg.SpoolDir = "-", "-"
	cfg.applyDefaults()
	cfg.derive()
	attr := attrib.New(pathRes{7: testCgroupPath}, pods, time.Minute, 0)
	return newPipeline(pipelineDeps{
		cfg: cfg, log: zerolog.Nop(),
		mapper: eventMapper{node: cfg.Node, source: cfg.Source, bootID: "boot", meta: attr},
		clock:  &bootClock{}, attr: attr, pods: pods, rec: recorder.New(recorder.Options{}),
		sink: sink, st: &stats{}, loss: make(chan struct{}, 1),
	})
}

// sinkRecorder keeps what the pipeline emits.
type sinkRecorder struct {
	mu  sync.Mutex
	evs []cloudevents.Event
}

func (s *sinkRecorder) Emit(ev cloudevents.Event) {
	s.mu.Lock()
	s.evs = append(s.evs, ev)
	s.mu.Unlock()
}

func (s *sinkRecorder) all() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.evs...)
}

// fakePods is the informer: synced, knowing the pods in m.
type fakePods struct {
	mu sync.Mutex
	m  map[string]attrib.PodMeta
}

func (f *fakePods) Pod(uid string) (attrib.PodMeta, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pm, ok := f.m[uid]
	return pm, ok
}

func (f *fakePods) Synced() bool { return true }

func (f *fakePods) add(pm attrib.PodMeta) {
	f.mu.Lock()
	f.m[pm.UID] = pm
	f.mu.Unlock()
}

func extOf(t *testing.T, ev cloudevents.Event, name string) string {
	t.Helper()
	v, _ := ev.Extensions()[name].(string) // absent: ""
	return v
}

func dataOf(t *testing.T, ev cloudevents.Event) api.EventData {
	t.Helper()
	var d api.EventData
	if err := json.Unmarshal(ev.Data(), &d); err != nil {
		t.Fatalf("data of %s: %v", ev.Type(), err)
	}
	return d
}

// TestPipelineRecordsAndEmits: each record is counted, kept in the flight
// recorder under its pod and emitted as its event, the exe of the exec
// carried to the process's later events.
func TestPipelineRecordsAndEmits(t *testing.T) {
	sink := &sinkRecorder{}
	p := testPipeline(Config{CoalesceWindow: -1}, nil, sink)
	for _, raw := range [][]byte{execRaw(100, 1000), connectRaw(2000), exitRaw(100, 3000)} {
		p.handle(raw)
	}
	evs := sink.all()
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	for i, typ := range []string{events.TypeProcessExec, events.TypeNetworkConnect, events.TypeProcessExit} {
		ev := evs[i]
		if ev.Type() != typ || ev.Subject() != "pod/"+testPodUID || extOf(t, ev, events.ExtPodUID) != testPodUID ||
			extOf(t, ev, events.ExtContainerID) != testContainer || extOf(t, ev, events.ExtExe) != "/usr/bin/true" {
			t.Errorf("event %d: %s subject %s %v", i, ev.Type(), ev.Subject(), ev.Extensions())
		}
	}
	if d := dataOf(t, evs[1]); d.Connect == nil || d.Connect.DPort != 9 || d.Connect.Proto != "udp" || d.Process.PID != 100 {
		t.Errorf("connect data %+v", d)
	}
	if got := p.st.emitted.Load(); got != 3 {
		t.Errorf("emitted %d", got)
	}
	for _, k := range []wire.Kind{wire.KindExec, wire.KindConnect, wire.KindExit} {
		if got := p.st.received[k].Load(); got != 1 {
			t.Errorf("received %s: %d", k, got)
		}
	}
	cgs, ok := p.rec.Pod(testPodUID)
	if !ok || len(cgs) != 1 || len(cgs[0].Events) != 3 || len(cgs[0].Processes) != 1 || cgs[0].Processes[0].ExitStatus == nil {
		t.Fatalf("flight recorder: %v %+v", ok, cgs)
	}
}

// TestPipelineWithoutSink: the recorder keeps everything, nothing is built.
func TestPipelineWithoutSink(t *testing.T) {
	p := testPipeline(Config{}, nil, nil)
	p.handle(connectRaw(1))
	if p.st.emitted.Load() != 0 || p.rec.Stats().Events != 1 {
		t.Errorf("emitted %d, recorded %+v", p.st.emitted.Load(), p.rec.Stats())
	}
}

// TestPipelineCoalesces: an identical connect within the window is
// counted, not emitted; the next one after it carries the count.
func TestPipelineCoalesces(t *testing.T) {
	sink := &sinkRecorder{}
	p := testPipeline(Config{CoalesceWindow: time.Second}, nil, sink)
	p.handle(connectRaw(1))
	p.handle(connectRaw(2))
	p.handle(connectRaw(3))
	p.handle(connectRaw(uint64(2 * time.Second)))
	evs := sink.all()
	if len(evs) != 2 || p.st.coalesced.Load() != 2 {
		t.Fatalf("%d events, %d coalesced; want 2 and 2", len(evs), p.st.coalesced.Load())
	}
	if d := dataOf(t, evs[1]); d.Coalesced != 2 {
		t.Errorf("second event carries coalesced %d, want 2", d.Coalesced)
	}
	if p.rec.Stats().Events != 4 {
		t.Errorf("the recorder keeps every record: %+v", p.rec.Stats())
	}
}

// TestPipelineMalformed: a record that does not parse is counted and kicks
// the housekeeping loop.
func TestPipelineMalformed(t *testing.T) {
	p := testPipeline(Config{}, nil, &sinkRecorder{})
	p.handle([]byte{1, 2, 3})
	if p.st.malformed.Load() != 1 {
		t.Errorf("malformed %d", p.st.malformed.Load())
	}
	select {
	case <-p.loss:
	default:
		t.Error("no loss kick")
	}
}

// TestPipelineWaitsForThePod: with a synced informer that does not know the
// pod yet, its events wait (the reader then has a deadline) and leave in
// order, named, once it does.
func TestPipelineWaitsForThePod(t *testing.T) {
	sink := &sinkRecorder{}
	pods := &fakePods{m: map[string]attrib.PodMeta{}}
	p := testPipeline(Config{CoalesceWindow: -1, AttributionWait: time.Hour, WakeupInterval: time.Millisecond}, pods, sink)
	p.handle(execRaw(100, 1))
	p.handle(connectRaw(2))
	if n := len(sink.all()); n != 0 || p.deadline().IsZero() {
		t.Fatalf("%d events emitted before the pod is known; deadline %v", n, p.deadline())
	}
	pods.add(attrib.PodMeta{UID: testPodUID, Namespace: "ns", Name: "web-1", Owner: "Deployment/web",
		Containers: map[string]attrib.ContainerMeta{testContainer: {Name: "app", Image: "nginx"}}})
	p.tick(time.Now().Add(time.Second))
	evs := sink.all()
	if len(evs) != 2 || evs[0].Type() != events.TypeProcessExec || evs[1].Type() != events.TypeNetworkConnect {
		t.Fatalf("released %d events: %v", len(evs), evs)
	}
	if evs[0].Subject() != "pod/ns/web-1" || extOf(t, evs[0], events.ExtContainer) != "app" || extOf(t, evs[0], events.ExtImage) != "nginx" {
		t.Errorf("released event not named: %s %v", evs[0].Subject(), evs[0].Extensions())
	}
	if !p.deadline().IsZero() {
		t.Error("a deadline with nothing waiting")
	}
}

// TestV1Scope: on v1 attribution the pods scope holds below the pod roots
// and for anything attributed to a pod.
func TestV1Scope(t *testing.T) {
	pods := newV1Scope(filters.Config{Scope: "pods", PodRoots: []string{"kubepods"}})
	all := newV1Scope(filters.Config{Scope: "all", PodRoots: []string{"kubepods"}})
	for _, c := range []struct {
		path, pod string
		want      bool
	}{
		{"/kubepods", "", true},
		{"/kubepods/besteffort/podx/c", "", true},
		{"/kubepods-other", "", false},
		{"/system.slice/sshd.service", "", false},
		{"/elsewhere/c", "uid", true},
	} {
		id := &attrib.Identity{CgroupPath: c.path}
		id.PodUID = c.pod
		if got := pods.contains(id); got != c.want {
			t.Errorf("scope pods, %s: %v", c.path, got)
		}
		if !all.contains(id) {
			t.Errorf("scope all, %s: out", c.path)
		}
	}
}
