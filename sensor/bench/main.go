// Command bench measures the sensor (make bench-sensor): userspace CPU per
// event and drops during an exec storm and a connect storm, side by side
// with bpftrace tracing the same events in the same run; the sensor's
// resident memory; and the wall-time overhead of a build with the sensor
// running.
//
// Every party runs in its own process, so each one's CPU is its own: the
// sensor is the parry-sensor binary the DaemonSet runs (built here as
// ko.yaml builds it, so its memory is the deployed binary's), and this binary
// re-executes itself as the sink and the load generators
// (PARRY_BENCH_ROLE). CPU time and memory come from /proc. The load runs inside a pod-shaped cgroup; the sensor watches pods
// only, bpftrace filters on the same cgroup id.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/cgroups"
)

func main() {
	switch os.Getenv("PARRY_BENCH_ROLE") {
	case "sink":
		os.Exit(runSink())
	case "exec-storm":
		os.Exit(execStorm(os.Args[1:]))
	case "connect-storm":
		os.Exit(connectStorm(os.Args[1:]))
	case "exec-unique":
		os.Exit(execUnique(os.Args[1:]))
	}
	if err := orchestrate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sensor:", err)
		os.Exit(1)
	}
}

type options struct {
	duration    time.Duration
	connectRate int
	build       string
	buildRuns   int
	skipBuild   bool
	bpftrace    string
	storms      string
	variants    string
	sensorArgs  string
	sensorEnv   string
	sensorBin   string
}

func orchestrate() error {
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each storm")
	flag.IntVar(&o.connectRate, "connect-rate", 50000, "connects per second in the paced connect storm")
	flag.StringVar(&o.build, "build", "go build -a -o /dev/null ./internal/events", "build workload for the overhead measurement (run from the module root, with an empty GOCACHE each time)")
	flag.IntVar(&o.buildRuns, "build-runs", 4, "runs of the build per configuration (interleaved)")
	flag.BoolVar(&o.skipBuild, "skip-build", false, "skip the build overhead measurement")
	flag.StringVar(&o.bpftrace, "bpftrace", "bpftrace", "bpftrace binary for the baseline (\"\" skips it)")
	flag.StringVar(&o.storms, "storms", "exec,connect,connect-max,recorder", "storms to run (recorder: fill the flight recorder from 20 pods and report the RSS)")
	flag.StringVar(&o.sensorArgs, "sensor-args", "", "extra flags for the sensor, e.g. \"-wakeup-interval 20ms\"")
	flag.StringVar(&o.sensorEnv, "sensor-env", "", "extra environment for the sensor, e.g. \"GOMAXPROCS=1\"")
	flag.StringVar(&o.sensorBin, "sensor-binary", "", "parry-sensor binary to measure; default: build ./sensor/cmd/parry-sensor as ko.yaml does")
	flag.StringVar(&o.variants, "variants", "default,every-event", "sensor configurations: default (coalescing), every-event (coalescing off)")
	flag.Parse()
	if err := sensor.Probe(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if o.sensorBin == "" {
		dir, err := os.MkdirTemp("", "parry-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.sensorBin = filepath.Join(dir, "parry-sensor")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", o.sensorBin, "./sensor/cmd/parry-sensor")
		build.Env, build.Stderr = append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building parry-sensor (run from the module root, or pass -sensor-binary): %w", err)
		}
	}
	pod, err := newPod()
	if err != nil {
		return err
	}
	defer pod.remove()
	fmt.Printf("parry sensor benchmark — %s, %d CPUs, kernel %s\n", time.Now().Format(time.RFC3339), numCPU(), kernelRelease())
	fmt.Printf("load runs in %s (cgroup id %d)\n\n", strings.TrimPrefix(pod.dir, pod.root), pod.id)

	sink, sinkURL, err := startRole(self, "sink", nil, nil)
	if err != nil {
		return err
	}
	defer stop(sink)

	var rows []row
	for _, variant := range []struct {
		key      string
		name     string
		coalesce string
		rate     int
	}{
		{"default", "sensor (default: coalescing 1s)", "1s", o.connectRate},
		{"every-event", "sensor (coalescing off: every event a CloudEvent)", "-1ns", 5000},
	} {
		if !strings.Contains(o.variants, variant.key) {
			continue
		}
		r, err := measure(self, pod, sinkURL, variant.coalesce, variant.rate, o, variant.name)
		if err != nil {
			return err
		}
		rows = append(rows, r...)
		o.bpftrace = "" // bpftrace once is enough
	}
	printRows(rows)

	if !o.skipBuild {
		if err := buildOverhead(self, sink, sinkURL, o); err != nil {
			return err
		}
	}
	return nil
}

type row struct {
	who, storm   string
	events       uint64
	rate         float64
	dropped      uint64
	cpuPerEvent  time.Duration
	cpuTotal     time.Duration
	rssPeakBytes int64
	note         string
}

func measure(self string, pod *pod, sinkURL, coalesce string, connectRate int, o options, name string) ([]row, error) {
	filters := filepath.Join(os.TempDir(), "parry-bench-filters.yaml")
	y := `apiVersion: parry.dev/v1alpha1
kind: SensorFilters
scope: pods
podRoots: [kubepods.slice]
exec: {all: true, exits: true}
connect: {all: true}
files: {prefixes: [/etc/shadow]}
signals: [setuid, setgid, ptrace, memfd, exec-memfd, unshare, setns, module]
`
	if err := os.WriteFile(filters, []byte(y), 0o644); err != nil {
		return nil, err
	}
	spool, _ := os.MkdirTemp("", "parry-bench-spool-")
	defer os.RemoveAll(spool)
	t0 := time.Now()
	sens, rec, err := startSensor(o.sensorBin, append([]string{
		"-sink", sinkURL, "-filters", filters, "-recorder-listen", "127.0.0.1:0", "-spool-dir", spool,
		"-coalesce-window", coalesce, "-node", "bench", "-health-interval", "1h",
	}, strings.Fields(o.sensorArgs)...), strings.Fields(o.sensorEnv))
	if err != nil {
		return nil, err
	}
	defer stop(sens)
	fmt.Printf("%s: loaded and attached in %s (process start to ready)\n", name, time.Since(t0).Round(time.Millisecond))
	defer func() {
		fmt.Printf("%s: memory after the storms: %s\n", name, procMem(sens.Process.Pid))
	}()

	var bt *bpftrace
	if o.bpftrace != "" {
		if bt, err = startBpftrace(o.bpftrace, pod.id); err != nil {
			fmt.Fprintf(os.Stderr, "bpftrace baseline skipped: %v\n", err)
			bt = nil
		} else {
			defer bt.stop()
		}
	}

	// idle cost: the sensor's periodic work with nothing to read
	c0 := procCPU(sens.Process.Pid)
	time.Sleep(2 * time.Second)
	idle := procCPU(sens.Process.Pid).minus(c0).total()
	fmt.Printf("%s: idle CPU %.2f%% of a core\n", name, 100*idle.Seconds()/2)

	var rows []row
	storms := []struct {
		key  string
		name string
		role string
		kind string
		args []string
	}{
		{"exec", "exec storm (max rate)", "exec-storm", "exec", []string{o.duration.String()}},
		{"connect", fmt.Sprintf("connect storm (%d/s)", connectRate), "connect-storm", "connect", []string{o.duration.String(), strconv.Itoa(connectRate)}},
		{"connect-max", "connect storm (max rate)", "connect-storm", "connect", []string{o.duration.String(), "0"}},
	}
	for _, st := range storms {
		if !slices.Contains(strings.Split(o.storms, ","), st.key) || (st.key == "connect-max" && coalesce == "-1ns") {
			continue
		}
		h0, err := health(rec)
		if err != nil {
			return nil, err
		}
		s0 := procCPU(sens.Process.Pid)
		var b0 cpuTime
		var bl0 uint64
		if bt != nil {
			b0 = procCPU(bt.cmd.Process.Pid)
			bl0 = bt.lines.Load()
		}
		start := time.Now()
		out, err := pod.run(self, st.role, st.args...)
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %s", st.role, err, out)
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
		elapsed := time.Since(start)
		// let both drain what is in flight
		time.Sleep(500 * time.Millisecond)
		h1, err := health(rec)
		if err != nil {
			return nil, err
		}
		got := h1.Kinds[st.kind].Received - h0.Kinds[st.kind].Received
		drop := h1.Kinds[st.kind].Dropped - h0.Kinds[st.kind].Dropped
		// The sensor also saw the generator's own exec/exit; count what
		// it read of every kind, and subtract its idle cost.
		all := uint64(0)
		for k, c := range h1.Kinds {
			all += c.Received - h0.Kinds[k].Received
		}
		used := procCPU(sens.Process.Pid).minus(s0)
		cpu := used.total() - time.Duration(float64(idle)*(elapsed+500*time.Millisecond).Seconds()/2)
		rows = append(rows, row{
			who: "parry sensor", storm: st.name + " — " + name, events: got, rate: float64(n) / elapsed.Seconds(),
			dropped: drop, cpuTotal: cpu, cpuPerEvent: perEvent(cpu, all), rssPeakBytes: procHWM(sens.Process.Pid),
			note: fmt.Sprintf("generator made %d; emitted %d, coalesced %d; in user mode %s/event; %d wake-ups (%d stretched by the storm), %d flush kicks", n, h1.Emitted-h0.Emitted, h1.Coalesced-h0.Coalesced,
				perEvent(used.userShare(cpu), all).Round(10*time.Nanosecond), h1.Wakeups-h0.Wakeups, h1.StretchedWakeups-h0.StretchedWakeups, h1.FlushKicks-h0.FlushKicks),
		})
		if bt != nil {
			lines := bt.lines.Load() - bl0
			bcpu := procCPU(bt.cmd.Process.Pid).minus(b0).total()
			var lost uint64
			if n > lines {
				lost = n - lines
			}
			rows = append(rows, row{
				who: "bpftrace", storm: st.name, events: lines, rate: float64(n) / elapsed.Seconds(), dropped: lost,
				cpuTotal: bcpu, cpuPerEvent: perEvent(bcpu, lines), rssPeakBytes: procHWM(bt.cmd.Process.Pid),
				note: "printf per event to a pipe",
			})
		}
	}
	if slices.Contains(strings.Split(o.storms, ","), "recorder") && coalesce != "-1ns" {
		if err := fillRecorder(self, sens.Process.Pid, rec, name); err != nil {
			return nil, err
		}
	}
	return rows, nil
}

// fillRecorder runs execs with unique arguments (a build's shape) in 20
// pods, more than the flight recorder's memory bound holds, and reports
// what the recorder keeps and the sensor's resident memory: the storms
// above fill one cgroup only, which a per-cgroup bound caps.
func fillRecorder(self string, pid int, rec, name string) error {
	const pods, execs = 20, 1100
	h0, err := health(rec)
	if err != nil {
		return err
	}
	c0 := procCPU(pid)
	for i := range pods {
		p, err := newPod()
		if err != nil {
			return err
		}
		out, err := p.run(self, "exec-unique", strconv.Itoa(execs), strconv.Itoa(i))
		p.remove()
		if err != nil {
			return fmt.Errorf("exec-unique: %v: %s", err, out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	h1, err := health(rec)
	if err != nil {
		return err
	}
	var records uint64
	for k, c := range h1.Kinds {
		records += c.Received - h0.Kinds[k].Received
	}
	cpu := procCPU(pid).minus(c0).total()
	fmt.Printf("%s: recorder filled from %d pods (%d execs each, unique arguments): holds %d events in %.2f MiB, evicted %d; %s/record; RSS now %.1fM, peak %.1fM\n",
		name, pods, execs, h1.Recorder.Events, float64(h1.Recorder.Bytes)/(1<<20),
		h1.Recorder.Evicted-h0.Recorder.Evicted, perEvent(cpu, records).Round(10*time.Nanosecond), float64(h1.RSSBytes)/(1<<20), float64(procHWM(pid))/(1<<20))
	return nil
}

func perEvent(cpu time.Duration, n uint64) time.Duration {
	if n == 0 {
		return 0
	}
	return cpu / time.Duration(n)
}

func printRows(rows []row) {
	fmt.Printf("\n%-14s %-62s %10s %10s %9s %12s %10s\n", "who", "storm", "events", "rate/s", "dropped", "CPU/event", "peak RSS")
	for _, r := range rows {
		fmt.Printf("%-14s %-62s %10d %10.0f %9d %12s %9.1fM\n", r.who, r.storm, r.events, r.rate, r.dropped,
			r.cpuPerEvent.Round(10*time.Nanosecond), float64(r.rssPeakBytes)/(1<<20))
		fmt.Printf("%-14s   %s; CPU %s\n", "", r.note, r.cpuTotal.Round(time.Millisecond))
	}
}

// buildOverhead times the build without a sensor, with a sensor watching
// pods (the node's own build is outside them) and with a sensor watching
// every process, interleaved to share the machine's noise.
func buildOverhead(self string, sink *exec.Cmd, sinkURL string, o options) error {
	fmt.Printf("\nbuild overhead: %q, %d runs per configuration, interleaved\n", o.build, o.buildRuns)
	filters := filepath.Join(os.TempDir(), "parry-bench-filters-all.yaml")
	all := "apiVersion: parry.dev/v1alpha1\nkind: SensorFilters\nscope: all\nexec: {all: true, exits: true}\nconnect: {all: true}\nfiles: {prefixes: [/etc/shadow, /root/.ssh]}\nsignals: [setuid, setgid, ptrace, memfd, exec-memfd, unshare, setns, module]\n"
	if err := os.WriteFile(filters, []byte(all), 0o644); err != nil {
		return err
	}
	configs := []struct {
		name string
		args []string
	}{
		{"no sensor", nil},
		{"sensor, scope pods", []string{"-sink", sinkURL, "-spool-dir", "-", "-recorder-listen", "-"}},
		{"sensor, scope all", []string{"-sink", sinkURL, "-spool-dir", "-", "-recorder-listen", "-", "-filters", filters}},
	}
	times := make([][]time.Duration, len(configs))
	cpus := make([][]time.Duration, len(configs))
	shares := make([][]float64, len(configs))
	ratios := make([][]float64, len(configs)) // each run's wall time over the same run's without a sensor
	var rss []int64
	// Wall time on a shared machine is noisy; the sensor's own account is
	// not: its CPU plus its BPF programs' run time, over the build's CPU.
	if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		fmt.Printf("  (BPF run-time statistics unavailable: %v; the sensor's share is not reported)\n", err)
	} else {
		defer st.Close()
	}
	for run := range o.buildRuns {
		// Rotate the order each run so no configuration always follows
		// the same one (a build warms the page cache for the next).
		for k := range configs {
			i := (k + run) % len(configs)
			c := configs[i]
			var sens *exec.Cmd
			if c.args != nil {
				var err error
				sens, _, err = startSensor(o.sensorBin, append(c.args, "-node", "bench"), nil)
				if err != nil {
					return err
				}
			}
			var s0 cpuTime
			var b0 time.Duration
			if sens != nil {
				s0, b0 = procCPU(sens.Process.Pid), bpfRunTime()
			}
			sink0, steal0 := procCPU(sink.Process.Pid), hostSteal()
			wall, cpu, err := timeBuild(o.build)
			// Steal is CPU the hypervisor gave to other guests: a run with
			// much of it was slowed by the host, not by the sensor.
			account := fmt.Sprintf("   host steal %s", (hostSteal() - steal0).Round(time.Millisecond))
			if sens != nil {
				sensorCPU, bpf := procCPU(sens.Process.Pid).minus(s0).total(), bpfRunTime()-b0
				shares[i] = append(shares[i], 100*(sensorCPU+bpf).Seconds()/cpu.Seconds())
				account += fmt.Sprintf("   sensor CPU %s + BPF %s + sink %s", sensorCPU.Round(time.Millisecond), bpf.Round(time.Millisecond),
					procCPU(sink.Process.Pid).minus(sink0).total().Round(time.Millisecond))
				rss = append(rss, procHWM(sens.Process.Pid))
				stop(sens)
			}
			if err != nil {
				return err
			}
			times[i] = append(times[i], wall)
			cpus[i] = append(cpus[i], cpu)
			if k == len(configs)-1 {
				for j := range configs {
					ratios[j] = append(ratios[j], pct(times[j][run], times[0][run]))
				}
			}
			fmt.Printf("  run %d %-20s wall %-8s build CPU %-8s%s\n", run+1, c.name, wall.Round(10*time.Millisecond), cpu.Round(10*time.Millisecond), account)
		}
	}
	// The machine is shared: the minimum is the run least disturbed by
	// others, the median the typical one. Build CPU (user+sys of the whole
	// build, which includes the BPF programs running in its context) is
	// the least noisy measure of what the sensor adds to the build itself.
	// The paired median (each run against the same round's run without a
	// sensor) is the least sensitive to the host's slow swings.
	fmt.Printf("  %-20s %10s %10s %10s   %s\n", "", "wall min", "wall med", "CPU med", "overhead (min / median / CPU / paired median)")
	for i, c := range configs {
		slices.Sort(ratios[i])
		fmt.Printf("  %-20s %10s %10s %10s   %+.1f%% / %+.1f%% / %+.1f%% / %+.1f%%\n", c.name,
			slices.Min(times[i]).Round(10*time.Millisecond), median(times[i]).Round(10*time.Millisecond), median(cpus[i]).Round(10*time.Millisecond),
			pct(slices.Min(times[i]), slices.Min(times[0])), pct(median(times[i]), median(times[0])), pct(median(cpus[i]), median(cpus[0])),
			ratios[i][len(ratios[i])/2])
	}
	for i, c := range configs {
		if len(shares[i]) > 0 {
			slices.Sort(shares[i])
			fmt.Printf("  %-20s sensor CPU + BPF run time, share of the build's CPU: median %.2f%%\n", c.name, shares[i][len(shares[i])/2])
		}
	}
	if len(rss) > 0 {
		fmt.Printf("  sensor peak RSS during builds: %.1fM\n", float64(slices.Max(rss))/(1<<20))
	}
	return nil
}

// bpfRunTime sums the run time the kernel counted for the sensor's BPF
// programs (known by name) while statistics are enabled.
func bpfRunTime() time.Duration {
	var total time.Duration
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return total
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, errInfo := p.Info()
		st, errStats := p.Stats()
		p.Close()
		if errInfo == nil && errStats == nil && sensorProgram(info.Name) {
			total += st.Runtime
		}
	}
}

func sensorProgram(name string) bool {
	for _, prefix := range []string{"exec_", "exit_", "connect4", "connect6", "open_exit", "priv_", "kick_flush"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// hostSteal is the machine's steal time so far (/proc/stat, all CPUs).
func hostSteal() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 {
		return 0
	}
	ticks, _ := strconv.ParseInt(f[8], 10, 64)
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func pct(a, b time.Duration) float64 { return 100 * (a.Seconds()/b.Seconds() - 1) }

func timeBuild(cmdline string) (wall, cpu time.Duration, err error) {
	cache, _ := os.MkdirTemp("", "parry-bench-gocache-")
	defer os.RemoveAll(cache)
	cmd := exec.Command("sh", "-c", cmdline)
	cmd.Env = append(os.Environ(), "GOCACHE="+cache, "GOFLAGS=-buildvcs=false")
	cmd.Stderr = os.Stderr
	start := time.Now()
	err = cmd.Run()
	wall = time.Since(start)
	if cmd.ProcessState != nil {
		// wait4 accumulates the CPU of every descendant the shell and go waited for
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	return wall, cpu, err
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// ---- roles ----

// startRole runs this binary in a role; the role prints one READY line
// with its address.
func startRole(self, role string, args []string, extraEnv []string) (*exec.Cmd, string, error) {
	cmd := exec.Command(self, args...)
	cmd.Env = append(append(os.Environ(), "PARRY_BENCH_ROLE="+role), extraEnv...)
	cmd.Stderr = io.Discard
	if os.Getenv("PARRY_BENCH_DEBUG") != "" {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	return startAndWait(cmd, out, role, false, func(line []byte) (string, bool) {
		a, ok := strings.CutPrefix(string(line), "READY ")
		return a, ok
	})
}

// startSensor runs parry-sensor and waits for its "sensor running" log
// line, which names the flight recorder's address.
func startSensor(bin string, args []string, extraEnv []string) (*exec.Cmd, string, error) {
	cmd := exec.Command(bin, append([]string{"-log-format", "json", "-log-level", "info"}, args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	logs, err := cmd.StderrPipe()
	if err != nil {
		return nil, "", err
	}
	return startAndWait(cmd, logs, "parry-sensor", os.Getenv("PARRY_BENCH_DEBUG") != "", func(line []byte) (string, bool) {
		var l struct{ Message, Recorder string }
		return l.Recorder, json.Unmarshal(line, &l) == nil && l.Message == "sensor running"
	})
}

// startAndWait starts cmd and reads out to its end (a full pipe would stall
// the child) until ready recognises a line; it returns what ready took from
// that line.
func startAndWait(cmd *exec.Cmd, out io.Reader, name string, echo bool, ready func([]byte) (string, bool)) (*exec.Cmd, string, error) {
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	found := make(chan string, 1)
	go func() {
		defer close(found)
		sc := bufio.NewScanner(out)
		seen := false
		for sc.Scan() {
			if echo {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
			if a, ok := ready(sc.Bytes()); ok && !seen {
				seen = true
				found <- a
			}
		}
		io.Copy(io.Discard, out) // a line too long for the scanner stops it
	}()
	select {
	case a, ok := <-found:
		if !ok {
			cmd.Wait()
			return nil, "", fmt.Errorf("%s exited before it was ready (PARRY_BENCH_DEBUG=1 shows why)", name)
		}
		return cmd, a, nil
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, "", fmt.Errorf("%s not ready within 30s", name)
	}
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// runSink accepts CloudEvents and counts them, as cheaply as it can.
func runSink() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	var n atomic.Uint64
	fmt.Println("READY http://" + l.Addr().String() + "/")
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	return 0
}

func execStorm(args []string) int {
	d, _ := time.ParseDuration(args[0])
	n := 0
	attr := &syscall.ProcAttr{Files: []uintptr{0, 1, 2}}
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		pid, err := syscall.ForkExec("/usr/bin/true", []string{"true"}, attr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}
	fmt.Println(n)
	return 0
}

// execUnique runs n execs whose arguments differ each time, as a build's
// compiler invocations do.
func execUnique(args []string) int {
	n, _ := strconv.Atoi(args[0])
	attr := &syscall.ProcAttr{Files: []uintptr{0, 1, 2}}
	for i := range n {
		pid, err := syscall.ForkExec("/usr/bin/true", []string{"true", "-o", fmt.Sprintf("/tmp/go-build%s/b%04d/_pkg_.a", args[1], i), "-p", fmt.Sprintf("example.com/pkg%d", i)}, attr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}
	return 0
}

// connectStorm connects one UDP socket to 127.0.0.1:9 again and again, at
// rate per second (paced per millisecond), or as fast as it can with 0.
func connectStorm(args []string) int {
	d, _ := time.ParseDuration(args[0])
	rate, _ := strconv.Atoi(args[1])
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return 1
	}
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9}
	n := 0
	start := time.Now()
	end := start.Add(d)
	for now := start; now.Before(end); now = time.Now() {
		target := n + 1000
		if rate > 0 {
			target = int(now.Sub(start).Seconds() * float64(rate))
		}
		for n < target {
			if err := unix.Connect(fd, sa); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			n++
		}
		if rate > 0 {
			time.Sleep(200 * time.Microsecond)
		}
	}
	fmt.Println(n)
	return 0
}

// ---- bpftrace baseline ----

type bpftrace struct {
	cmd   *exec.Cmd
	lines atomic.Uint64
}

const bpftraceScript = `
tracepoint:sched:sched_process_exec /cgroup == $1/ { printf("exec %d %d %s %s\n", pid, uid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect /cgroup == $1/ { $sa = (struct sockaddr_in *)args->uservaddr; printf("connect %d %d %s %d %d\n", pid, uid, comm, $sa->sin_addr.s_addr, $sa->sin_port); }
`

func startBpftrace(bin string, cgroupID uint64) (*bpftrace, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s not found (apt-get install bpftrace)", bin)
	}
	b := &bpftrace{cmd: exec.Command(path, "-e", bpftraceScript, strconv.FormatUint(cgroupID, 10))}
	out, err := b.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	b.cmd.Stderr = io.Discard
	if err := b.cmd.Start(); err != nil {
		return nil, err
	}
	attached := make(chan struct{})
	go func() {
		br := bufio.NewReaderSize(out, 1<<20)
		once := false
		for {
			line, err := br.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
			if !once && strings.HasPrefix(string(line), "Attaching") {
				once = true
				close(attached)
				continue
			}
			if len(line) > 0 && (line[0] == 'e' || line[0] == 'c') {
				b.lines.Add(1)
			}
		}
	}()
	select {
	case <-attached:
		time.Sleep(500 * time.Millisecond) // probes attach after the message
		return b, nil
	case <-time.After(30 * time.Second):
		b.cmd.Process.Kill()
		return nil, fmt.Errorf("bpftrace did not attach within 30s")
	}
}

func (b *bpftrace) stop() { stop(b.cmd) }

// ---- pod cgroup and /proc ----

type pod struct {
	root, dir string
	id        uint64
	created   []string
}

func newPod() (*pod, error) {
	m, err := cgroups.Discover("/proc/self/mountinfo")
	if err != nil || m.V2 == "" {
		return nil, fmt.Errorf("no cgroup2 mount: %v", err)
	}
	b := make([]byte, 48)
	rand.Read(b)
	h := hex.EncodeToString(b)
	uid := h[0:8] + "_" + h[8:12] + "_" + h[12:16] + "_" + h[16:20] + "_" + h[20:32]
	p := &pod{root: m.V2}
	dir := m.V2
	for _, c := range []string{"kubepods.slice", "kubepods-besteffort.slice", "kubepods-besteffort-pod" + uid + ".slice", "cri-containerd-" + hex.EncodeToString(b[16:]) + ".scope"} {
		dir = filepath.Join(dir, c)
		if err := os.Mkdir(dir, 0o755); err == nil {
			p.created = append(p.created, dir)
		} else if !os.IsExist(err) {
			return nil, err
		}
	}
	p.dir = dir
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	p.id = st.Ino
	return p, nil
}

func (p *pod) remove() {
	for i := len(p.created) - 1; i >= 0; i-- {
		if !strings.HasSuffix(p.created[i], "kubepods.slice") {
			os.Remove(p.created[i])
		}
	}
}

func (p *pod) run(self, role string, args ...string) (string, error) {
	fd, err := unix.Open(p.dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "PARRY_BENCH_ROLE="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.Output()
	return string(out), err
}

// cpuTime is a process's CPU time: total from the scheduler's nanosecond
// accounting of each thread (precise), and its split into user mode and the
// kernel on the process's behalf (system calls, faults) from /proc/PID/stat,
// which counts in USER_HZ ticks of 10 ms, too coarse to total a short storm.
type cpuTime struct{ run, user, system time.Duration }

func (c cpuTime) total() time.Duration { return c.run }

func (c cpuTime) minus(o cpuTime) cpuTime {
	return cpuTime{c.run - o.run, c.user - o.user, c.system - o.system}
}

// userShare is the part of d that the tick counts put in user mode.
func (c cpuTime) userShare(d time.Duration) time.Duration {
	if c.user+c.system == 0 {
		return 0
	}
	return time.Duration(float64(d) * float64(c.user) / float64(c.user+c.system))
}

func procCPU(pid int) cpuTime {
	var c cpuTime
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		c.run += time.Duration(ns)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return c
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	tick := time.Second / time.Duration(clkTck)
	c.user, c.system = time.Duration(ut)*tick, time.Duration(st)*tick
	return c
}

const clkTck = 100 // USER_HZ on Linux

// procHWM is a process's peak resident set size.
func procHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func health(addr string) (api.Health, error) {
	var h api.Health
	resp, err := http.Get("http://" + addr + api.RouteHealth)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

func numCPU() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil {
		return set.Count()
	}
	return 0
}

func kernelRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

// procMem summarises a process's memory: resident, of which anonymous
// (heap, stacks) and file/shared mappings (binary pages, the ring buffer).
func procMem(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, k := range []string{"VmHWM", "VmRSS", "RssAnon", "RssFile"} {
			if v, ok := strings.CutPrefix(line, k+":"); ok {
				out = append(out, k+" "+strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(out, ", ")
}
