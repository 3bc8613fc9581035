// Package kernel loads parry's BPF programs (bpf/sensor.bpf.c), attaches
// every hook this kernel allows, and gives the sensor the ring buffer, the
// loss counters and the filter maps.
//
// Each hook is loaded and attached on its own, so a program the verifier
// refuses or a tracepoint this kernel lacks costs that hook only: its status
// (active, or the reason it is not) is reported, never fatal on its own.
package kernel

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/api"
)

// Options configure Load.
type Options struct {
	// RingBufferSize in bytes: a power of two and a multiple of the page size.
	RingBufferSize int
	// BTFPath is a vmlinux BTF file for kernels without /sys/kernel/btf/vmlinux
	// (for example from BTFHub); empty uses the running kernel's.
	BTFPath string
	// Cgroup2Path is the cgroup2 mount the connect hooks attach to; empty
	// leaves connect4/6 (and with them the egress block) inactive.
	Cgroup2Path string
	// Disable names hooks ("exec", "open.openat") or hook variants
	// ("exec/tp_btf") not to load.
	Disable []string
	// WakeupInterval is the initial wake-up interval (see
	// SetWakeupInterval); zero wakes the reader for every record.
	WakeupInterval time.Duration
}

// HookStatus says whether one hook runs and, if not, why; the sensor's
// health reports it as is.
type HookStatus = api.HookStatus

// Kernel holds the loaded objects. Close releases them.
type Kernel struct {
	mu     sync.Mutex // serialises read-modify-writes of the config map
	maps   parryMaps
	bss    *ebpf.Map
	wakeup *ebpf.Variable // wakeup_ns in .bss
	progs  []*ebpf.Program
	links  []link.Link
	hooks  []HookStatus
	loaded map[string]*ebpf.Program // by program name, for attaching one program to several events
	kick   *ebpf.Program            // kick_flush, nil when the kernel refuses it
	ncpu   int
	ringSz int
}

type variant struct {
	kind    string
	prog    string
	attach  func(*ebpf.Program) (link.Link, error)
	require string // a file that must exist, e.g. the tracepoint's id
}

type hook struct {
	name     string
	variants []variant
}

func hooks(o Options) []hook {
	tp := func(name, group, event, prog string) hook {
		return hook{name: name, variants: []variant{{
			kind: "tracepoint", prog: prog,
			attach: func(p *ebpf.Program) (link.Link, error) { return attachTracepoint(group, event, p) },
		}}}
	}
	rawOrBTF := func(name, event, btfProg, rawProg string) hook {
		return hook{name: name, variants: []variant{
			{kind: "tp_btf", prog: btfProg, attach: func(p *ebpf.Program) (link.Link, error) {
				return link.AttachTracing(link.TracingOptions{Program: p})
			}},
			{kind: "raw_tp", prog: rawProg, attach: func(p *ebpf.Program) (link.Link, error) {
				return link.AttachRawTracepoint(link.RawTracepointOptions{Name: event, Program: p})
			}},
		}}
	}
	cg := func(name, prog string, at ebpf.AttachType) hook {
		return hook{name: name, variants: []variant{{
			kind: "cgroup", prog: prog,
			attach: func(p *ebpf.Program) (link.Link, error) {
				if o.Cgroup2Path == "" {
					return nil, errors.New("no cgroup2 mount found in /proc/self/mountinfo: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) to watch connects")
				}
				return link.AttachCgroup(link.CgroupOptions{Path: o.Cgroup2Path, Attach: at, Program: p})
			},
		}}}
	}
	hs := []hook{
		rawOrBTF("exec", "sched_process_exec", "exec_tp_btf", "exec_raw_tp"),
		rawOrBTF("exit", "sched_process_exit", "exit_tp_btf", "exit_raw_tp"),
		cg("connect4", "connect4", ebpf.AttachCGroupInet4Connect),
		cg("connect6", "connect6", ebpf.AttachCGroupInet6Connect),
	}
	// One program serves every open syscall: it reads only ret, which all
	// sys_exit events share, so it is verified once and attached to each.
	for _, sc := range openSyscalls(runtime.GOARCH) {
		hs = append(hs, tp("open."+sc, "syscalls", "sys_exit_"+sc, "open_exit_openat"))
	}
	for _, sc := range []string{
		"setuid", "setreuid", "setresuid", "setfsuid", "setgid", "setregid", "setresgid", "setfsgid",
		"ptrace", "memfd_create", "unshare", "setns", "init_module", "finit_module",
	} {
		// enter saves the arguments, exit reports the outcome: both or neither.
		hs = append(hs, hook{name: "priv." + sc, variants: []variant{{
			kind: "tracepoint", prog: "priv_enter_" + sc + "+priv_exit_" + sc,
		}}})
	}
	return hs
}

// openSyscalls lists the syscalls that open a file by name or handle on
// an architecture: arm64 has the generic syscall table, without open and
// creat (their hooks would only ever report a missing tracepoint).
func openSyscalls(goarch string) []string {
	if goarch == "arm64" {
		return []string{"openat", "openat2", "open_by_handle_at"}
	}
	return []string{"openat", "open", "openat2", "creat", "open_by_handle_at"}
}

// Load creates the maps, then loads and attaches each hook on its own. It
// fails only when nothing could be loaded at all (no privilege, no BTF);
// hooks that fail are reported by Hooks.
func Load(o Options, log zerolog.Logger) (*Kernel, error) {
	ensureTracefs(log)
	spec, err := loadParry()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	if o.RingBufferSize > 0 {
		if err := checkRingSize(o.RingBufferSize); err != nil {
			return nil, err
		}
		spec.Maps["events"].MaxEntries = uint32(o.RingBufferSize)
	}
	opts := &ebpf.CollectionOptions{Cache: btf.NewCache()}
	if o.BTFPath != "" {
		kt, err := btf.LoadSpec(o.BTFPath)
		if err != nil {
			return nil, fmt.Errorf("loading kernel BTF from --btf %s: %w", o.BTFPath, err)
		}
		opts.Programs.KernelTypes = kt
	}

	k := &Kernel{loaded: map[string]*ebpf.Program{}, ncpu: runtime.NumCPU(), ringSz: int(spec.Maps["events"].MaxEntries)}
	if n, err := ebpf.PossibleCPU(); err == nil {
		k.ncpu = n
	}
	var ms struct {
		parryMaps
		Bss      *ebpf.Map      `ebpf:".bss"`
		WakeupNs *ebpf.Variable `ebpf:"wakeup_ns"`
	}
	if err := spec.LoadAndAssign(&ms, opts); err != nil {
		return nil, explainLoad("creating BPF maps", err)
	}
	k.maps, k.bss, k.wakeup = ms.parryMaps, ms.Bss, ms.WakeupNs
	if err := k.SetWakeupInterval(o.WakeupInterval); err != nil {
		k.Close()
		return nil, err
	}
	repl := map[string]*ebpf.Map{
		"events": k.maps.Events, "counters": k.maps.Counters, "sensor_cfg": k.maps.SensorCfg,
		"exe_names": k.maps.ExeNames, "ports": k.maps.Ports, "path_trie": k.maps.PathTrie,
		"scope_roots": k.maps.ScopeRoots, "blocked_cgroups": k.maps.BlockedCgroups,
		"tracked": k.maps.Tracked, "pending": k.maps.Pending, "scratch_map": k.maps.ScratchMap,
		"flush_timer": k.maps.FlushTimer,
		".bss":        k.bss,
	}
	opts.MapReplacements = repl

	// First, while the heap is small: loading it last raised the peak RSS
	// by 2 MB.
	if p, err := k.loadProgram(spec, opts, "kick_flush"); err != nil {
		log.Warn().Err(err).Msg("flush kick unavailable: while nothing else arms the flush timer, opens and privilege signals wake the sensor one by one")
	} else {
		k.kick, k.progs = p, append(k.progs, p)
	}
	for _, h := range hooks(o) {
		t0 := time.Now()
		k.loadHook(spec, opts, h, o.Disable, log)
		log.Debug().Str("hook", h.name).Dur("took", time.Since(t0)).Msg("hook loaded")
	}
	if !slices.ContainsFunc(k.hooks, func(h HookStatus) bool { return h.Active }) {
		k.Close()
		return nil, fmt.Errorf("no BPF hook could be attached (%s); the sensor has nothing to watch", firstReason(k.hooks))
	}
	k.hooks = append(k.hooks, probeOptional()...)
	return k, nil
}

// SetWakeupInterval sets how long a record may wait for the reader under
// load: the kernel's flush timer wakes it this long after its last wake-up,
// and a record after a quiet spell this long wakes it at once. It is a
// store to the .bss mapping, no system call.
func (k *Kernel) SetWakeupInterval(d time.Duration) error {
	if err := k.wakeup.Set(uint64(d)); err != nil {
		return fmt.Errorf("setting the wake-up interval (wakeup_ns): %w", err)
	}
	return nil
}

// ErrNoKick: the kernel refused the kick_flush program at load.
var ErrNoKick = errors.New("the kernel refused the kick_flush program (see the start-up log)")

// KickFlush arms the kernel's flush timer unless it is armed: the records of
// programs that cannot arm it themselves (tracepoints, the raw_tp fallback)
// then ride on the flush instead of waking the reader one by one. The reader
// calls it when it is woken again within half a wake-up interval.
func (k *Kernel) KickFlush() error {
	if k.kick == nil {
		return ErrNoKick
	}
	_, err := k.kick.Run(&ebpf.RunOptions{})
	return err
}

func firstReason(hs []HookStatus) string {
	for _, h := range hs {
		if h.Reason != "" {
			return h.Name + ": " + h.Reason
		}
	}
	return "no hooks"
}

func disabled(list []string, name, kind string) bool {
	for _, d := range list {
		if d == name || d == name+"/"+kind || (strings.HasSuffix(d, ".*") && strings.HasPrefix(name, strings.TrimSuffix(d, "*"))) {
			return true
		}
	}
	return false
}

func (k *Kernel) loadHook(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, h hook, disable []string, log zerolog.Logger) {
	var reasons []string
	for _, v := range h.variants {
		st := HookStatus{Name: h.name, Kind: v.kind, Program: v.prog}
		if disabled(disable, h.name, v.kind) {
			reasons = append(reasons, v.kind+": disabled by configuration")
			continue
		}
		var err error
		if strings.Contains(v.prog, "+") {
			err = k.loadPair(spec, opts, strings.Split(v.prog, "+"))
		} else {
			err = k.loadOne(spec, opts, v.prog, v.attach)
		}
		if err == nil {
			st.Active = true
			if len(reasons) > 0 {
				st.Reason = "fallback; " + strings.Join(reasons, "; ")
			}
			k.hooks = append(k.hooks, st)
			return
		}
		reasons = append(reasons, v.kind+": "+err.Error())
	}
	st := HookStatus{Name: h.name, Kind: h.variants[len(h.variants)-1].kind, Reason: strings.Join(reasons, "; ")}
	k.hooks = append(k.hooks, st)
	log.Debug().Str("hook", h.name).Str("reason", st.Reason).Msg("hook inactive")
}

// loadPair loads a sys_enter/sys_exit pair of syscall tracepoints.
func (k *Kernel) loadPair(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, progs []string) error {
	nLinks := len(k.links)
	nProgs := len(k.progs)
	for _, name := range progs {
		event := strings.Replace(strings.Replace(name, "priv_enter_", "sys_enter_", 1), "priv_exit_", "sys_exit_", 1)
		err := k.loadOne(spec, opts, name, func(p *ebpf.Program) (link.Link, error) {
			return attachTracepoint("syscalls", event, p)
		})
		if err != nil {
			for _, l := range k.links[nLinks:] {
				l.Close()
			}
			for _, p := range k.progs[nProgs:] {
				for n, lp := range k.loaded {
					if lp == p {
						delete(k.loaded, n)
					}
				}
				p.Close()
			}
			k.links, k.progs = k.links[:nLinks], k.progs[:nProgs]
			return err
		}
	}
	return nil
}

func (k *Kernel) loadOne(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, name string, attach func(*ebpf.Program) (link.Link, error)) error {
	if p, ok := k.loaded[name]; ok {
		l, err := attach(p)
		if err != nil {
			return fmt.Errorf("attaching %s: %w", name, err)
		}
		k.links = append(k.links, l)
		return nil
	}
	p, err := k.loadProgram(spec, opts, name)
	if err != nil {
		return err
	}
	l, err := attach(p)
	if err != nil {
		p.Close()
		return fmt.Errorf("attaching %s: %w", name, err)
	}
	k.progs = append(k.progs, p)
	k.links = append(k.links, l)
	k.loaded[name] = p
	return nil
}

// loadProgram loads one program against the shared maps.
func (k *Kernel) loadProgram(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, name string) (*ebpf.Program, error) {
	ps, ok := spec.Programs[name]
	if !ok {
		return nil, fmt.Errorf("program %s is not in the BPF object (regenerate with make generate)", name)
	}
	one := &ebpf.CollectionSpec{
		Maps:      spec.Maps,
		Programs:  map[string]*ebpf.ProgramSpec{name: ps},
		Variables: spec.Variables,
		Types:     spec.Types,
		ByteOrder: spec.ByteOrder,
	}
	var dst struct {
		P *ebpf.Program `ebpf:"prog"`
	}
	one.Programs = map[string]*ebpf.ProgramSpec{"prog": ps}
	if err := one.LoadAndAssign(&dst, opts); err != nil {
		return nil, explainLoad("loading "+name, err)
	}
	return dst.P, nil
}

// attachTracepoint says plainly when the kernel lacks the tracepoint (a
// syscall compiled out, like init_module without CONFIG_MODULES).
func attachTracepoint(group, event string, p *ebpf.Program) (link.Link, error) {
	l, err := link.Tracepoint(group, event, p, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tracepoint %s/%s does not exist on this kernel (syscall not built in, or tracefs missing)", group, event)
	}
	return l, err
}

// explainLoad turns the common load failures into a cause and a fix.
func explainLoad(what string, err error) error {
	switch {
	case errors.Is(err, os.ErrPermission) || errors.Is(err, ebpf.ErrNotSupported) && os.Geteuid() != 0:
		return fmt.Errorf("%s: %w: the sensor needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (run as root or privileged)", what, err)
	case errors.Is(err, btf.ErrNotFound):
		return fmt.Errorf("%s: %w: this kernel has no BTF (/sys/kernel/btf/vmlinux); use a kernel built with CONFIG_DEBUG_INFO_BTF=y or pass --btf with a vmlinux BTF file", what, err)
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		// The last lines say why; the whole log is thousands of lines.
		return fmt.Errorf("%s: verifier refused the program: %s", what, lastLines(ve, 3))
	}
	return fmt.Errorf("%s: %w", what, err)
}

func lastLines(ve *ebpf.VerifierError, n int) string {
	l := ve.Log
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

func checkRingSize(n int) error {
	ps := os.Getpagesize()
	if n < ps || n&(n-1) != 0 {
		return fmt.Errorf("ring buffer size %d: use a power of two of at least the page size (%d)", n, ps)
	}
	return nil
}

// Hooks reports every hook: active ones, and the others with the reason.
func (k *Kernel) Hooks() []HookStatus { return slices.Clone(k.hooks) }

// RingBuffer is the events map, for ringbuf.NewReader.
func (k *Kernel) RingBuffer() *ebpf.Map { return k.maps.Events }

// RingBufferSize is the size the ring was created with.
func (k *Kernel) RingBufferSize() int { return k.ringSz }

// NewReader opens a reader on the ring buffer.
func (k *Kernel) NewReader() (*ringbuf.Reader, error) { return ringbuf.NewReader(k.maps.Events) }

// Close detaches every hook and frees the maps.
func (k *Kernel) Close() error {
	// Each detach waits for an RCU grace period; doing them side by side
	// makes shutdown take one grace period instead of thirty.
	errs := make([]error, len(k.links))
	var wg sync.WaitGroup
	for i, l := range k.links {
		wg.Go(func() { errs[i] = l.Close() })
	}
	wg.Wait()
	for _, p := range k.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range []*ebpf.Map{
		k.maps.Events, k.maps.Counters, k.maps.SensorCfg, k.maps.ExeNames, k.maps.Ports,
		k.maps.PathTrie, k.maps.ScopeRoots, k.maps.BlockedCgroups, k.maps.Tracked,
		k.maps.Pending, k.maps.ScratchMap, k.maps.FlushTimer, k.bss,
	} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	k.links, k.progs = nil, nil
	return errors.Join(errs...)
}
