package sensor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/cgroups"
	"parry.dev/parry/tests/podcgroup"
)

func probeUnprivileged() int {
	err := sensor.Probe()
	if err == nil {
		fmt.Println("Probe returned nil without privilege")
		return 1
	}
	fmt.Println(err)
	return 0
}

func isType(typ string) func(cloudevents.Event) bool {
	return func(ev cloudevents.Event) bool { return ev.Type() == typ }
}

func decode(t *testing.T, ev cloudevents.Event) api.EventData {
	t.Helper()
	var d api.EventData
	if err := json.Unmarshal(ev.Data(), &d); err != nil {
		t.Fatalf("data of %s: %v", ev.Type(), err)
	}
	return d
}

// TestPodWorkload is the main test: a process started inside a
// pod-shaped cgroup yields an exec event with the right pod UID and
// container id, a connect to a loopback port yields a connect event with
// that port, and a read of /etc/shadow yields a file event; the flight
// recorder serves the pod's history; the egress block refuses connects.
func TestPodWorkload(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, "")})
	p := newPod(t)

	addr := podcgroup.Listen(t, "127.0.0.1:0")
	port := addr.Port
	script := fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d; exec 3>&-; /usr/bin/cat /etc/shadow > /dev/null; exit 3", port)
	if out, err := p.run(t, "/usr/bin/bash", "-c", script); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("workload: %v: %s", err, out)
	}

	inPod := func(typ string) func(cloudevents.Event) bool {
		return func(ev cloudevents.Event) bool { return ev.Type() == typ && ext(ev, events.ExtPodUID) == p.uid }
	}
	exe := sink.wait(t, 5*time.Second, "exec event of bash in the pod", func(ev cloudevents.Event) bool {
		return inPod(events.TypeProcessExec)(ev) && ext(ev, events.ExtExe) == "/usr/bin/bash"
	})
	if got := ext(exe, events.ExtContainerID); got != p.cid {
		t.Errorf("exec containerid = %q, want %q", got, p.cid)
	}
	d := decode(t, exe)
	if !slices.Equal(d.Args, []string{"/usr/bin/bash", "-c", script}) || d.Pod == nil || d.Pod.Runtime != "containerd" || d.Pod.QoS != "besteffort" {
		t.Errorf("exec data: args %q pod %+v", d.Args, d.Pod)
	}
	if exe.Subject() != "pod/"+p.uid || ext(exe, events.ExtNode) != "test-node" || events.TraceID(exe) == "" {
		t.Errorf("exec attributes: subject %q node %q traceparent %q", exe.Subject(), ext(exe, events.ExtNode), ext(exe, events.ExtTraceparent))
	}

	conn := sink.wait(t, 5*time.Second, "connect event to the loopback port", func(ev cloudevents.Event) bool {
		return inPod(events.TypeNetworkConnect)(ev) && ext(ev, events.ExtDestPort) == strconv.Itoa(port)
	})
	if ext(conn, events.ExtDestAddr) != "127.0.0.1" || ext(conn, events.ExtProto) != "tcp" || ext(conn, events.ExtContainerID) != p.cid || ext(conn, events.ExtExe) != "/usr/bin/bash" {
		t.Errorf("connect attributes: %v", conn.Extensions())
	}

	file := sink.wait(t, 5*time.Second, "file event for /etc/shadow", func(ev cloudevents.Event) bool {
		return inPod(events.TypeFileOpen)(ev) && ext(ev, events.ExtPath) == "/etc/shadow"
	})
	if ext(file, events.ExtExe) != "/usr/bin/cat" || ext(file, events.ExtComm) != "cat" {
		t.Errorf("file event from %q (%q), want cat", ext(file, events.ExtExe), ext(file, events.ExtComm))
	}
	exit := sink.wait(t, 5*time.Second, "exit event of bash", func(ev cloudevents.Event) bool {
		return inPod(events.TypeProcessExit)(ev) && ext(ev, events.ExtExe) == "/usr/bin/bash"
	})
	if d := decode(t, exit); d.Exit == nil || d.Exit.Code != 3 {
		t.Errorf("exit data %+v, want code 3", d.Exit)
	}

	// Nothing from outside the pods crosses (scope: pods).
	if out, err := exec.Command("/usr/bin/cat", "/etc/shadow").CombinedOutput(); err != nil {
		t.Fatalf("cat /etc/shadow outside the pods: %v: %s", err, out)
	}
	time.Sleep(100 * time.Millisecond)
	for _, ev := range sink.all() {
		if ev.Type() != events.TypeSensorHealth && ext(ev, events.ExtPodUID) == "" {
			t.Errorf("event from outside the pods: %s %v", ev.Type(), ev.Extensions())
		}
	}

	t.Run("flight recorder", func(t *testing.T) {
		resp, err := apiClient().Get("http://" + s.RecorderAddr() + api.PodPath(p.uid))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h api.PodHistory
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, err)
		}
		if len(h.Cgroups) != 1 || h.Cgroups[0].ContainerID != p.cid {
			t.Fatalf("cgroups %+v", h.Cgroups)
		}
		c := h.Cgroups[0]
		var exes []string
		for _, pr := range c.Processes {
			exes = append(exes, pr.Exe)
		}
		if !slices.Contains(exes, "/usr/bin/bash") || !slices.Contains(exes, "/usr/bin/cat") {
			t.Errorf("process table %v", exes)
		}
		if len(c.Connections) != 1 || int(c.Connections[0].DPort) != port || len(c.Files) != 1 || c.Files[0].Path != "/etc/shadow" {
			t.Errorf("connections %+v files %+v", c.Connections, c.Files)
		}
		nope, err := apiClient().Get("http://" + s.RecorderAddr() + api.PodPath("nope"))
		if err != nil {
			t.Fatal(err)
		}
		nope.Body.Close()
		if nope.StatusCode != 404 {
			t.Errorf("unknown pod: %d", nope.StatusCode)
		}
	})

	t.Run("egress block", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPut, "http://"+s.RecorderAddr()+api.BlockPath(p.uid), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := apiClient().Do(req)
		if err != nil {
			t.Fatalf("block: %v", err)
		}
		var res api.BlockResult
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !res.Blocked || res.PodUID != p.uid || res.CgroupID == 0 {
			t.Fatalf("block: %d %+v %v", resp.StatusCode, res, err)
		}
		out, err := p.run(t, "/usr/bin/bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d", port))
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("connect from a blocked pod: err %v, output %q", err, out)
		}
		if c, err := net.Dial("tcp", addr.String()); err != nil {
			t.Errorf("the block leaked outside the pod: %v", err)
		} else {
			c.Close()
		}
		sink.wait(t, 5*time.Second, "connect event with action=blocked", func(ev cloudevents.Event) bool {
			return inPod(events.TypeNetworkConnect)(ev) && ext(ev, events.ExtAction) == "blocked"
		})
		if _, err := s.UnblockPod(p.uid); err != nil {
			t.Fatal(err)
		}
		if out, err := p.run(t, "/usr/bin/bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d", port)); err != nil {
			t.Errorf("after unblock: %v %s", err, out)
		}
		if ids, err := s.Blocked(); err != nil || len(ids) != 0 {
			t.Errorf("still blocked: %v %v", ids, err)
		}
	})

	t.Run("privilege signals", func(t *testing.T) {
		out, err := p.helper(t, "priv").CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v %s", err, out)
		}
		for _, sig := range []string{"memfd", "unshare", "ptrace", "setuid", "setgid", "exec-memfd"} {
			ev := sink.wait(t, 5*time.Second, "privilege signal "+sig, func(ev cloudevents.Event) bool {
				return inPod(events.TypePrivilege)(ev) && ext(ev, events.ExtSignal) == sig
			})
			d := decode(t, ev)
			switch sig {
			case "setuid":
				if d.Signal.Old.UID != 0 || d.Signal.New.UID != 65534 || d.Signal.Ret != 0 {
					t.Errorf("setuid: %+v %+v", d.Signal.Old, d.Signal.New)
				}
			case "memfd", "exec-memfd":
				if !strings.Contains(d.Signal.File, "parry-payload") {
					t.Errorf("%s: file %q", sig, d.Signal.File)
				}
			}
		}
		fileless := sink.wait(t, 5*time.Second, "exec event of the memfd", func(ev cloudevents.Event) bool {
			return inPod(events.TypeProcessExec)(ev) && strings.Contains(ext(ev, events.ExtExe), "memfd:parry-payload")
		})
		if d := decode(t, fileless); !d.Fileless || d.Process.UID != 65534 {
			t.Errorf("fileless exec: %+v", d)
		}
	})

	t.Run("health", func(t *testing.T) {
		h := s.Health()
		for kind, c := range h.Kinds {
			if c.Seen != c.Received+c.Dropped+c.InFlight {
				t.Errorf("%s: seen %d != received %d + dropped %d + in flight %d", kind, c.Seen, c.Received, c.Dropped, c.InFlight)
			}
		}
		if h.LostTotal != 0 {
			t.Errorf("lost events under a light load: %+v", h.Lost)
		}
		ev := sink.wait(t, 5*time.Second, "health event", isType(events.TypeSensorHealth))
		var hd api.Health
		if err := json.Unmarshal(ev.Data(), &hd); err != nil || len(hd.Hooks) == 0 {
			t.Errorf("health data: %v %+v", err, hd)
		}
	})
}

// TestStartupToFirstEvent: from New to the first event at the sink in
// under a second.
func TestStartupToFirstEvent(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	p := newPod(t)
	ensurePodRoot(t)
	stop := make(chan struct{})
	go func() { // a workload that keeps exec'ing, as a busy node does
		for {
			select {
			case <-stop:
				return
			default:
			}
			// An error here is the pod going away as the test ends (the
			// goroutine may not fail the test then); a run that never
			// worked shows as no event below.
			p.run(t, "/usr/bin/true")
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer close(stop)
	start := time.Now()
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, "")})
	sink.wait(t, 3*time.Second, "first exec event", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeProcessExec && ext(ev, events.ExtPodUID) == p.uid
	})
	took := time.Since(start)
	t.Logf("start-up to first event at the sink: %s (to first record read: %dms)", took, s.Health().StartupMs)
	if took > time.Second {
		t.Errorf("start-up to first event took %s, want < 1s", took)
	}
}

// TestBatchedRecordsAreFlushed: the first record after a quiet spell wakes
// the reader; the records right behind it are submitted without a wake-up,
// and with the pod silent afterwards only the kernel's flush timer, one
// WakeupInterval after that wake-up, brings them out (the reader sets no
// deadline of its own). The connects come from a cgroup program, which arms
// the timer; the /etc/shadow open comes from a tracepoint, which cannot and
// must ride on that flush. On the raw_tp fallback the exec cannot arm it
// either.
func TestBatchedRecordsAreFlushed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		disable []string
	}{
		{"tp_btf", nil},
		{"raw_tp", []string{"exec/tp_btf", "exit/tp_btf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireKernel(t)
			sink := newTestSink(t)
			p := newPod(t)
			const interval = time.Second
			startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""),
				WakeupInterval: interval, CoalesceWindow: -1, DisableHooks: tc.disable})
			time.Sleep(interval + 500*time.Millisecond) // quiet for longer than a wake-up interval
			// The helper's exec wakes the reader; its connects and its open
			// follow within microseconds, and then the pod falls silent.
			const base = 42100
			start := time.Now()
			if out, err := p.helper(t, "udp-ports-shadow", strconv.Itoa(base), "3").CombinedOutput(); err != nil {
				t.Fatalf("helper: %v: %s", err, out)
			}
			for i := range 3 {
				port := strconv.Itoa(base + i)
				sink.wait(t, 4*time.Second, "connect to port "+port, func(ev cloudevents.Event) bool {
					return ev.Type() == events.TypeNetworkConnect && ext(ev, events.ExtDestPort) == port
				})
			}
			sink.wait(t, 4*time.Second, "open of /etc/shadow", func(ev cloudevents.Event) bool {
				return ev.Type() == events.TypeFileOpen && ext(ev, events.ExtPath) == "/etc/shadow"
			})
			// Held by the flush, not woken one by one: no sooner than the
			// interval, and not much later.
			if took := time.Since(start); took < interval/2 || took > interval+time.Second {
				t.Errorf("batched records arrived after %s, want about the %s wake-up interval", took, interval)
			}
		})
	}
}

// TestPrivilegeStormWakesBounded: setuid() calls a millisecond apart come
// from a tracepoint, which cannot arm the flush timer. Each would wake the
// reader on its own; the reader arms the timer for them when woken again
// within an interval, so the wake-ups stay near two per interval while
// every record still arrives (without the kick: one wake-up per record).
func TestPrivilegeStormWakesBounded(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	p := newPod(t)
	const interval = 20 * time.Millisecond
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""), WakeupInterval: interval})
	time.Sleep(200 * time.Millisecond)
	h0 := s.Health()
	const n = 1000
	start := time.Now()
	if out, err := p.helper(t, "setuid-storm", strconv.Itoa(n), "1ms").CombinedOutput(); err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	took := time.Since(start)
	var h1 api.Health
	for deadline := time.Now().Add(5 * time.Second); ; {
		h1 = s.Health()
		if h1.Kinds["privilege"].Received-h0.Kinds["privilege"].Received >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d privilege records", h1.Kinds["privilege"].Received-h0.Kinds["privilege"].Received, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	wakeups, kicks := h1.Wakeups-h0.Wakeups, h1.FlushKicks-h0.FlushKicks
	limit := 3*uint64(took/interval) + 20 // the flush and the first record after it, and slack
	t.Logf("%d records in %s: %d wake-ups (limit %d), %d kicks", n, took.Round(time.Millisecond), wakeups, limit, kicks)
	if wakeups > limit || kicks == 0 {
		t.Errorf("%d wake-ups and %d kicks for %d records over %s; want at most %d wake-ups", wakeups, kicks, n, took, limit)
	}
}

// TestStormStretchesWakeups: during a sustained storm of records the
// reader stretches the wake-up interval, up to StormWakeupInterval, so
// fewer wake-ups carry more records each; every record still arrives, and
// the first record after the storm brings the interval back to
// WakeupInterval.
func TestStormStretchesWakeups(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	p := newPod(t)
	const base, storm, rate, length = 10 * time.Millisecond, 50 * time.Millisecond, 4000, 1500 * time.Millisecond
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""),
		WakeupInterval: base, StormWakeupInterval: storm})
	time.Sleep(200 * time.Millisecond)
	h0 := s.Health()
	if out, err := p.helper(t, "udp-paced", "127.0.0.1:42300", strconv.Itoa(rate), length.String()).CombinedOutput(); err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	during := s.Health()
	// The storm is over; after a quiet spell one more record arrives.
	time.Sleep(300 * time.Millisecond)
	if out, err := p.helper(t, "udp-ports", "42301", "1").CombinedOutput(); err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	sink.wait(t, 4*time.Second, "the connect after the storm", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeNetworkConnect && ext(ev, events.ExtDestPort) == "42301"
	})
	after := s.Health()
	received := after.Kinds["connect"].Received - h0.Kinds["connect"].Received
	wakeups, stretched := during.Wakeups-h0.Wakeups, during.StretchedWakeups-h0.StretchedWakeups
	t.Logf("%d records; during the storm %d wake-ups, %d stretched, interval %dµs; after it %dµs",
		received, wakeups, stretched, during.WakeupIntervalUs, after.WakeupIntervalUs)
	if min := uint64(float64(rate) * length.Seconds() * 0.9); received < min {
		t.Errorf("received %d connect records, want at least %d", received, min)
	}
	if lost := after.LostTotal - h0.LostTotal; lost != 0 {
		t.Errorf("lost %d records", lost)
	}
	// At the base interval the storm would take about 150 wake-ups; at
	// 128/4000 s = 32ms, about 50.
	if stretched == 0 || wakeups > uint64(length/base)*2/3 {
		t.Errorf("%d wake-ups (%d stretched) in a %s storm at %d/s; want stretched wake-ups and at most %d",
			wakeups, stretched, length, rate, uint64(length/base)*2/3)
	}
	if during.WakeupIntervalUs <= base.Microseconds() {
		t.Errorf("interval during the storm %dµs, want stretched beyond %s", during.WakeupIntervalUs, base)
	}
	if after.WakeupIntervalUs != base.Microseconds() {
		t.Errorf("interval after the storm %dµs, want %s again", after.WakeupIntervalUs, base)
	}
}

// TestDropCounterExact overloads a one-page ring buffer while nothing reads
// it: every record is either received or counted as dropped, exactly, and
// a health event reports the loss at once.
func TestDropCounterExact(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	ensurePodRoot(t)
	p := newPod(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Scope: this pod only, so other workloads cannot touch the counts.
	m, err := cgroups.Discover("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	own := filtersFile(t, "")
	y, err := os.ReadFile(own)
	if err != nil {
		t.Fatal(err)
	}
	y = []byte(strings.Replace(string(y), "podRoots: [kubepods.slice]", "podRoots: ["+strings.TrimPrefix(p.podDir, m.V2+"/")+"]", 1))
	if err := os.WriteFile(own, y, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := sensor.Config{
		Sink: sink.url(), FiltersPath: own, RingBufferSize: os.Getpagesize(),
		RecorderAddr: "-", SpoolDir: t.TempDir(), Node: "test-node", HealthInterval: time.Hour,
	}
	s, err := sensor.New(ctx, cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The storm runs before Run: nobody reads, the ring fills, the rest drops.
	const n = 20000
	if out, err := p.helper(t, "udp-storm", "127.0.0.1:9", strconv.Itoa(n)).CombinedOutput(); err != nil {
		t.Fatalf("storm: %v %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var h api.Health
	deadline := time.Now().Add(10 * time.Second)
	for {
		h = s.Health()
		if c := h.Kinds["connect"]; c.Seen > 0 && c.InFlight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ring not drained: %+v", h.Kinds)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c := h.Kinds["connect"]
	t.Logf("connect: seen %d, received %d, dropped %d", c.Seen, c.Received, c.Dropped)
	if c.Seen != n {
		t.Errorf("seen %d connects, the workload made %d", c.Seen, n)
	}
	if c.Dropped == 0 || c.Received == 0 {
		t.Errorf("a one-page ring under %d records should both deliver and drop: %+v", n, c)
	}
	for kind, k := range h.Kinds {
		if k.Seen != k.Received+k.Dropped {
			t.Errorf("%s: seen %d != received %d + dropped %d", kind, k.Seen, k.Received, k.Dropped)
		}
	}
	ev := sink.wait(t, 3*time.Second, "health event reporting the loss", func(ev cloudevents.Event) bool {
		if ev.Type() != events.TypeSensorHealth || ext(ev, events.ExtSeverity) != "warning" {
			return false
		}
		var hd api.Health
		if err := json.Unmarshal(ev.Data(), &hd); err != nil {
			t.Errorf("health data: %v", err)
			return false
		}
		return hd.NewLoss && hd.Lost.RingBuffer == h.Lost.RingBuffer && hd.Lost.RingBuffer >= c.Dropped
	})
	t.Logf("loss reported by %s", ev.ID())
}

// TestSpoolEndToEnd: the sink is down during a burst of kernel events, then
// comes up: every event arrives exactly once, in order.
func TestSpoolEndToEnd(t *testing.T) {
	requireKernel(t)
	sink := reservedSink(t)
	p := newPod(t)
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""), CoalesceWindow: -1})
	const n, base = 3000, 20000
	if out, err := p.helper(t, "udp-ports", strconv.Itoa(base), strconv.Itoa(n)).CombinedOutput(); err != nil {
		t.Fatalf("burst: %v %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Health().Emitter == nil || s.Health().Emitter.Spooled == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing spooled while the sink is down: %+v", s.Health().Emitter)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sink.listen(t)
	connects := func() []cloudevents.Event {
		var out []cloudevents.Event
		for _, ev := range sink.all() {
			if ev.Type() == events.TypeNetworkConnect && ext(ev, events.ExtPodUID) == p.uid {
				out = append(out, ev)
			}
		}
		return out
	}
	deadline = time.Now().Add(30 * time.Second)
	for len(connects()) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive now
	got := connects()
	if len(got) != n {
		t.Fatalf("received %d connect events, want %d", len(got), n)
	}
	seen := map[string]bool{}
	for i, ev := range got {
		if want := strconv.Itoa(base + i); ext(ev, events.ExtDestPort) != want {
			t.Fatalf("event %d has dport %s, want %s (out of order)", i, ext(ev, events.ExtDestPort), want)
		}
		if seen[ev.ID()] {
			t.Fatalf("event %s delivered twice", ev.ID())
		}
		seen[ev.ID()] = true
	}
	if h := s.Health(); h.LostTotal != 0 || h.Emitter.Spooled != 0 {
		t.Errorf("after the drain: lost %+v, spooled %d", h.Lost, h.Emitter.Spooled)
	}
}

// TestHookFallbackAndDisabled: a hook that cannot be used falls back (exec
// on raw_tp) or is reported inactive with its reason, and the sensor runs.
func TestHookFallbackAndDisabled(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	s := startSensor(t, sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""), DisableHooks: []string{"exec/tp_btf", "priv.*"}})
	hooks := map[string]string{}
	for _, h := range s.Hooks() {
		if h.Active {
			hooks[h.Name] = h.Kind
		} else if strings.HasPrefix(h.Name, "priv.") && !strings.Contains(h.Reason, "disabled") {
			t.Errorf("%s inactive for the wrong reason: %s", h.Name, h.Reason)
		}
	}
	if hooks["exec"] != "raw_tp" {
		t.Fatalf("exec not on its raw_tp fallback: %v", hooks)
	}
	if _, ok := hooks["priv.ptrace"]; ok {
		t.Fatal("a disabled hook is active")
	}
	p := newPod(t)
	if out, err := p.run(t, "/usr/bin/true"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sink.wait(t, 5*time.Second, "exec event through raw_tp", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeProcessExec && ext(ev, events.ExtPodUID) == p.uid && ext(ev, events.ExtExe) == "/usr/bin/true"
	})
}

// TestProbeUnprivileged: without privilege, Probe says so and what to do.
func TestProbeUnprivileged(t *testing.T) {
	requireKernel(t)
	// the test binary's build directory is private: copy it where nobody
	// may run it
	dir, err := os.MkdirTemp("", "parry-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/sensor.test", bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dir + "/sensor.test")
	cmd.Env = append(os.Environ(), "PARRY_SENSOR_HELPER=probe")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged Probe: %v: %s", err, out)
	}
	if msg := string(out); !strings.Contains(msg, "privilege") || !strings.Contains(msg, "root") {
		t.Errorf("message does not say why and what to do: %s", msg)
	}
}

// TestBadBTF: a BTF file that is not one gives a clear error, not a crash.
func TestBadBTF(t *testing.T) {
	requireKernel(t)
	_, err := sensor.New(context.Background(), sensor.Config{BTFPath: "/etc/hostname", RecorderAddr: "-", SpoolDir: "-"}, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "--btf /etc/hostname") {
		t.Fatalf("got %v", err)
	}
	_, err = sensor.New(context.Background(), sensor.Config{BTFPath: "/nonexistent/vmlinux", RecorderAddr: "-", SpoolDir: "-"}, testLog(t))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing --btf file: %v", err)
	}
}

// TestShortLivedPod: a pod whose container ran for a moment and whose
// cgroups are gone before the sensor reads its records is still
// attributed (the exec record carries the cgroup names), and its history
// stays in the flight recorder.
func TestShortLivedPod(t *testing.T) {
	requireKernel(t)
	sink := newTestSink(t)
	ensurePodRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := sensor.Config{Sink: sink.url(), FiltersPath: filtersFile(t, ""), RecorderAddr: "127.0.0.1:0", SpoolDir: t.TempDir(), Node: "test-node"}
	s, err := sensor.New(ctx, cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := newPod(t)
	if out, err := p.run(t, "/usr/bin/cat", "/etc/shadow"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	p.Remove() // the pod is gone before anything is read
	if _, err := os.Stat(p.dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup still there: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	ev := sink.wait(t, 5*time.Second, "exec event of the gone pod", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeProcessExec && ext(ev, events.ExtExe) == "/usr/bin/cat" && ext(ev, events.ExtPodUID) == p.uid
	})
	if ext(ev, events.ExtContainerID) != p.cid {
		t.Errorf("containerid %q", ext(ev, events.ExtContainerID))
	}
	// the open happened in the same cgroup: attributed from the cache
	sink.wait(t, 5*time.Second, "file event of the gone pod", func(ev cloudevents.Event) bool {
		return ev.Type() == events.TypeFileOpen && ext(ev, events.ExtPodUID) == p.uid
	})
	h, ok := s.PodHistory(p.uid)
	if !ok || len(h.Cgroups) != 1 || len(h.Cgroups[0].Files) != 1 {
		t.Fatalf("flight recorder lost the pod: %v %+v", ok, h)
	}
}
