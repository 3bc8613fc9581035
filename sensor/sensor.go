package sensor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/filters"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/cgroups"
	"parry.dev/parry/sensor/internal/emit"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/recorder"
	"parry.dev/parry/sensor/internal/wire"
)

// Probe reports whether this process can run the sensor: nil when BPF can
// be loaded (privileged, kernel BTF present); otherwise an error that says
// why not and what to do. It has no lasting effect.
func Probe() error { return kernel.Probe("") }

// Run runs a sensor until ctx is done.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	s, err := New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Run(ctx)
}

// memoryLimit is the Go runtime's soft memory limit for a process that runs
// the sensor alone: about 7 MB of live heap besides the flight recorder,
// room for the collector to work, and the recorder twice. Without a limit
// the collector lets the heap grow to twice the live heap, which with the
// binary's pages and the ring buffer's took the RSS to 40.8 MB with a full
// 3 MiB recorder (37.5 MB with the limit). A tighter one costs CPU: at 12
// MiB the collector ran all the time (17 times the CPU while the recorder
// filled).
func memoryLimit(recorderBytes int) int64 { return 10<<20 + 2*int64(recorderBytes) }

// Sensor is a loaded sensor. New loads it, Run reads until the context
// ends, Close releases the kernel objects. Block and Unblock may be called
// while it runs.
//
// The reader's hot path is its pipeline (pipeline.go: coalescer, pending
// queue, event mapper); the counters are its stats; the periodic work is
// the housekeeper's.
type Sensor struct {
	cfg    Config
	log    zerolog.Logger
	start  time.Time
	bootID string

	k       *kernel.Kernel
	ring    *kernel.Ring
	mounts  cgroups.Mounts
	res     *cgroups.Resolver
	v1      bool // attribute by the v1 memory cgroup
	filt    filters.Config
	attr    *attrib.Attributor
	inf     *attrib.Informer
	rec     *recorder.Recorder
	em      *emit.Emitter
	emDone  chan struct{}
	srv     *http.Server
	srvAddr string
	apiAuth apiAuthStats

	clock    bootClock
	st       stats
	mapper   eventMapper // records and health reports to CloudEvents
	pipe     *pipeline
	lossKick chan struct{} // the pipeline's losses, for the housekeeper

	// reader goroutine: wake-up pacing (see readLoop)
	pace   pacer
	kickOK bool // KickFlush works

	scopeMu  sync.Mutex
	scopeIDs []uint64

	closeOnce sync.Once
}

// New loads the BPF programs, attaches the hooks this kernel allows,
// writes the filters into the kernel and prepares attribution, recorder
// and emitter. Nothing is read until Run.
func New(ctx context.Context, cfg Config, log zerolog.Logger) (*Sensor, error) {
	cfg.applyDefaults()
	cfg.derive()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log = log.With().Str("component", "sensor").Logger()
	s := &Sensor{
		cfg: cfg, log: log, start: time.Now(),
		lossKick: make(chan struct{}, 1),
		emDone:   make(chan struct{}),
		kickOK:   true,
		pace:     newPacer(cfg.WakeupInterval, cfg.StormWakeupInterval),
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := kernel.Probe(cfg.BTFPath); err != nil {
		return nil, err
	}
	filt, err := filters.Load(cfg.FiltersPath)
	if err != nil {
		return nil, err
	}
	s.filt = filt
	s.bootID = readBootID()
	s.clock.refresh()
	if err := rlimit.RemoveMemlock(); err != nil {
		log.Warn().Err(err).Msg("could not lift RLIMIT_MEMLOCK; BPF maps may fail to load on kernels before 5.11")
	}

	s.mounts, err = cgroups.Discover("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	s.v1 = s.chooseV1()
	root := s.mounts.V2
	if s.v1 {
		root = s.mounts.MemoryV1
	}
	if root != "" {
		if s.res, err = cgroups.NewResolver(root); err != nil {
			return nil, err
		}
	}

	s.k, err = kernel.Load(kernel.Options{
		RingBufferSize: cfg.RingBufferSize,
		BTFPath:        cfg.BTFPath,
		Cgroup2Path:    s.mounts.V2,
		Disable:        cfg.DisableHooks,
		WakeupInterval: cfg.WakeupInterval,
	}, log)
	if err != nil {
		return nil, err
	}
	s.st.interval.Store(int64(cfg.WakeupInterval))
	// Parsing kernel BTF for CO-RE allocated tens of MB that are garbage now.
	debug.FreeOSMemory()
	if cfg.LimitMemory && debug.SetMemoryLimit(-1) == math.MaxInt64 {
		debug.SetMemoryLimit(memoryLimit(cfg.RecorderMaxBytes))
	}
	if err := s.applyFilters(); err != nil {
		return nil, err
	}
	if s.ring, err = s.k.NewRing(); err != nil {
		return nil, err
	}
	s.logHooks()

	var pods attrib.PodSource
	cs, err := attrib.Clientset(cfg.Kubeconfig)
	switch {
	case err != nil:
		log.Warn().Err(err).Msg("no pod metadata: attributing by cgroup path only (pod UID, container id)")
	case cs == nil:
		log.Info().Msg("no cluster configured (--kubeconfig, KUBECONFIG or in-cluster): attributing by cgroup path only (pod UID, container id)")
	default:
		s.inf = attrib.NewInformer(cs, cfg.Node, cfg.RecorderTTL, log)
		pods = s.inf
		if cfg.APIAuthn == nil && cfg.APIAuthz == nil {
			cfg.APIAuthn, cfg.APIAuthz = clusterAPIAuth(cs)
		}
	}
	if (cfg.APIAuthn == nil || cfg.APIAuthz == nil) && cfg.RecorderAddr != "-" {
		log.Warn().Msg("the API cannot authenticate and authorize callers (no cluster, no token file): it refuses every request but " + api.RouteHealth)
	}
	s.cfg = cfg // with the API's authenticator and authorizer
	s.attr = attrib.New(resolverOrNil(s.res), pods, cfg.RecorderTTL, 0)
	rules := redact.New(cfg.RedactNames...)
	s.rec = recorder.New(recorder.Options{TTL: cfg.RecorderTTL, MaxBytes: cfg.RecorderMaxBytes, Redact: rules})

	if cfg.Sink != "" {
		ov, err := emit.ParseOverrides(cfg.CEOverrides)
		if err != nil {
			return nil, err
		}
		spool := cfg.SpoolDir
		if spool == "-" {
			spool = ""
		}
		client := httpclient.New(cfg.SinkTimeout)
		if cfg.SinkToken != nil {
			// Read it once now, so a wrong path fails the start and not
			// every delivery.
			if _, err := cfg.SinkToken(); err != nil {
				return nil, fmt.Errorf("sink token (--sink-token-file): %w; mount the projected service-account token there, or leave the flag out to send none", err)
			}
			client = auth.WithToken(client, cfg.SinkToken)
		}
		s.em, err = emit.New(emit.Options{
			Sink: cfg.Sink, Client: client, SpoolDir: spool,
			SpoolMaxBytes: cfg.SpoolMaxBytes, Overrides: ov, Log: log,
		})
		if err != nil {
			return nil, err
		}
	} else {
		close(s.emDone)
		log.Warn().Msg("no --sink and no K_SINK: events stay in the flight recorder, none are emitted")
	}
	s.mapper = eventMapper{node: cfg.Node, source: cfg.Source, bootID: s.bootID, meta: s.attr, redact: rules}
	d := pipelineDeps{
		cfg: cfg, log: log, mapper: s.mapper, clock: &s.clock, attr: s.attr, pods: pods,
		rec: s.rec, st: &s.st, loss: s.lossKick,
	}
	if s.v1 {
		d.v1 = newV1Scope(s.filt)
	}
	if s.em != nil {
		d.sink = s.em
	}
	s.pipe = newPipeline(d)

	if cfg.RecorderAddr != "-" {
		l, err := net.Listen("tcp", cfg.RecorderAddr)
		if err != nil {
			return nil, fmt.Errorf("flight recorder: listening on %s (--recorder-listen): %w", cfg.RecorderAddr, err)
		}
		s.srvAddr = l.Addr().String()
		s.srv = httpserver.New(s.handler(), cfg.RecorderLimits)
		go s.srv.Serve(l)
	}
	ok = true
	return s, nil
}

func resolverOrNil(r *cgroups.Resolver) attrib.Resolver {
	if r == nil {
		return nil
	}
	return r
}

// RecorderAddr is the address the flight recorder listens on ("" when off).
func (s *Sensor) RecorderAddr() string { return s.srvAddr }

// Hooks reports which hooks are active and why the others are not.
func (s *Sensor) Hooks() []api.HookStatus { return s.k.Hooks() }

// chooseV1 decides the attribution hierarchy: cgroup v2 unless the kubelet
// evidently runs on v1 only (pod cgroups under the v1 memory controller and
// none under cgroup2), or the operator says so.
func (s *Sensor) chooseV1() bool {
	switch s.cfg.CgroupMode {
	case "v1":
		return s.mounts.MemoryV1 != ""
	case "v2":
		return false
	}
	if s.mounts.V2 == "" {
		return s.mounts.MemoryV1 != ""
	}
	if s.mounts.MemoryV1 == "" {
		return false
	}
	exists := func(root string) bool {
		for _, r := range s.filt.PodRoots {
			if _, err := os.Stat(filepath.Join(root, r)); err == nil {
				return true
			}
		}
		return false
	}
	return !exists(s.mounts.V2) && exists(s.mounts.MemoryV1)
}

func (s *Sensor) logHooks() {
	var active, inactive []string
	for _, h := range s.k.Hooks() {
		if h.Active && !h.Optional {
			active = append(active, h.Name+"("+h.Kind+")")
		} else if !h.Active {
			ev := s.log.Info()
			if !h.Optional {
				ev = s.log.Warn()
				inactive = append(inactive, h.Name)
			}
			ev.Str("hook", h.Name).Str("kind", h.Kind).Str("reason", h.Reason).Msg("hook not active")
		} else {
			s.log.Info().Str("hook", h.Name).Str("kind", h.Kind).Msg(h.Reason)
		}
	}
	mode := "v2 " + s.mounts.V2
	if s.v1 {
		mode = "v1 memory " + s.mounts.MemoryV1
	}
	s.log.Info().Strs("active", active).Strs("inactive", inactive).Str("cgroup", mode).
		Int("ring_buffer", s.k.RingBufferSize()).Msg("sensor hooks attached")
}

// applyFilters writes the filter configuration and the current scope roots
// into the kernel.
func (s *Sensor) applyFilters() error {
	f := s.filt
	kf := kernel.Filter{
		ExeNames:    f.Exec.Names,
		Ports:       f.Connect.Ports,
		Prefixes:    f.Files.Prefixes,
		WakeupBytes: uint64(s.cfg.RingBufferSize / 8),
	}
	if f.Exec.All || len(f.Exec.Names) > 0 {
		kf.Flags |= kernel.FlagExec
	}
	if f.Exec.All {
		kf.Flags |= kernel.FlagExecAll
	}
	if f.Exec.Exits {
		kf.Flags |= kernel.FlagExit
	}
	if f.Connect.All || len(f.Connect.Ports) > 0 {
		kf.Flags |= kernel.FlagConnect
	}
	if f.Connect.All {
		kf.Flags |= kernel.FlagConnectAll
	}
	if len(f.Files.Prefixes) > 0 {
		kf.Flags |= kernel.FlagFiles
	}
	if s.v1 {
		kf.Flags |= kernel.FlagCgroupV1
	}
	if f.Scope == "pods" {
		kf.Flags |= kernel.FlagScope
		kf.ScopeRoots = s.scanScopeRoots()
	}
	for _, name := range f.Signals {
		if sig, ok := wire.SignalByName(name); ok {
			kf.Signals |= 1 << sig
		}
	}
	return s.k.SetFilter(kf)
}

// scanScopeRoots resolves the configured pod roots that exist now.
func (s *Sensor) scanScopeRoots() []uint64 {
	var ids []uint64
	if s.res == nil || s.v1 {
		return nil
	}
	for _, r := range s.filt.PodRoots {
		if id, err := s.res.ID("/" + r); err == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	s.scopeMu.Lock()
	s.scopeIDs = ids
	s.scopeMu.Unlock()
	return ids
}

// rescanScope picks up pod roots created after start-up (the kubelet
// starting after the sensor).
func (s *Sensor) rescanScope() {
	if s.filt.Scope != "pods" || s.v1 || s.res == nil {
		return
	}
	s.scopeMu.Lock()
	old := s.scopeIDs
	s.scopeMu.Unlock()
	var now []uint64
	for _, r := range s.filt.PodRoots {
		if id, err := s.res.ID("/" + r); err == nil {
			now = append(now, id)
		}
	}
	slices.Sort(now)
	if !slices.Equal(old, now) {
		if err := s.applyFilters(); err != nil {
			s.log.Error().Err(err).Msg("updating the scope roots in the kernel")
		} else {
			s.log.Info().Int("roots", len(now)).Msg("pod cgroup roots changed; kernel scope updated")
		}
	}
}

// Run reads the kernel's records until ctx is done.
func (s *Sensor) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.inf != nil {
		go s.inf.Run(ctx)
	}
	if s.em != nil {
		go func() {
			s.em.Run(ctx, 2*time.Second)
			close(s.emDone)
		}()
	}
	go s.housekeeper().run(ctx, s.lossKick)
	go func() {
		<-ctx.Done()
		s.ring.Close() // interrupts Wait
	}()
	s.log.Info().Str("node", s.cfg.Node).Str("sink", s.cfg.Sink).Str("recorder", s.srvAddr).
		Dur("startup", time.Since(s.start)).Msg("sensor running")
	err := s.readLoop()
	cancel()
	<-s.emDone
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// readLoop reads records until the ring is closed. It drains the ring
// without system calls and waits in the netpoller (see kernel.Ring) until
// the kernel wakes it: at once for the first record after a quiet spell,
// then once per WakeupInterval while records flow (the flush timer in
// bpf/sensor.bpf.c), stretched up to StormWakeupInterval during a storm
// (pacer). A wake-up costs tens of µs, up to about 100 in a VM, and is the
// bulk of the sensor's CPU under load, so the loop sets no deadline of its
// own, which would add a runtime timer and its wake-ups, except while
// events wait for their pod's name.
//
// Tracepoint programs cannot arm the flush timer, and wake the reader at
// once when it is not armed. Woken again within half an interval, the
// reader arms it for them (KickFlush), so a stream of opens or privilege
// signals costs a few wake-ups per interval, not one per record.
func (s *Sensor) readLoop() error {
	var lastWake time.Time
	read := 0 // records since the last wake-up
	for {
		now := time.Now()
		read += s.ring.Drain(s.pipe.handle)
		s.pipe.tick(now)
		slept, err := s.ring.Wait(s.pipe.deadline())
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, kernel.ErrRingClosed):
			return nil
		default:
			return fmt.Errorf("waiting for the ring buffer: %w", err)
		}
		if err != nil || !slept {
			continue
		}
		woke := time.Now()
		s.st.wakeups.Add(1)
		// Flush wake-ups come an interval apart, give or take the
		// scheduler's delay in waking us: half an interval tells them
		// from the records that woke us on their own.
		early := woke.Sub(lastWake) < s.pace.cur/2
		if s.pace.cur > s.cfg.WakeupInterval {
			s.st.stretched.Add(1)
		}
		if iv := s.pace.woke(read, woke.Sub(lastWake)); iv != time.Duration(s.st.interval.Load()) {
			if err := s.k.SetWakeupInterval(iv); err != nil {
				s.log.Warn().Err(err).Msg("the wake-up interval stays as it was")
			} else {
				s.st.interval.Store(int64(iv))
			}
		}
		read = 0
		if early && s.kickOK {
			switch err := s.k.KickFlush(); {
			case err == nil:
				s.st.kicks.Add(1)
			case errors.Is(err, kernel.ErrNoKick):
				s.kickOK = false // the load already said so
			default:
				if s.st.kickErrs.Add(1) == 1 {
					s.log.Warn().Err(err).Msg("arming the flush timer failed (counted; retried on the next early wake-up)")
				}
			}
		}
		lastWake = woke
	}
}

// Close detaches the hooks and releases everything New created.
func (s *Sensor) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s.srv.Shutdown(ctx)
			cancel()
		}
		if s.ring != nil {
			s.ring.Close()
			s.ring.Unmap()
		}
		if s.k != nil {
			err = s.k.Close()
		}
		if s.res != nil {
			s.res.Close()
		}
	})
	return err
}

// Block makes every connect() from the cgroup, and from the cgroups below
// it, fail with EPERM, in the kernel, until Unblock. The refused attempts
// are reported as connect events with action "blocked".
func (s *Sensor) Block(cgroupID uint64) error {
	if err := s.blockable(); err != nil {
		return err
	}
	return s.k.Block(cgroupID)
}

// Unblock lifts Block.
func (s *Sensor) Unblock(cgroupID uint64) error { return s.k.Unblock(cgroupID) }

// Blocked lists the blocked cgroup ids.
func (s *Sensor) Blocked() ([]uint64, error) { return s.k.Blocked() }

func (s *Sensor) blockable() error {
	if s.v1 {
		return errors.New("egress block: this node attributes by cgroup v1, and the connect hooks see only cgroup v2 ids")
	}
	for _, h := range s.k.Hooks() {
		if (h.Name == "connect4" || h.Name == "connect6") && !h.Active {
			return fmt.Errorf("egress block: hook %s is not active (%s)", h.Name, h.Reason)
		}
	}
	return nil
}

// BlockPod blocks the egress of every container of the pod, present and
// future (the pod-level cgroup is blocked). It returns the cgroup id blocked.
//
// It refuses pods of protected namespaces, and, with a cluster, pods it
// cannot place in a namespace (mayBlock).
func (s *Sensor) BlockPod(uid string) (uint64, error) {
	if err := s.mayBlock(uid); err != nil {
		return 0, err
	}
	id, err := s.podCgroup(uid)
	if err != nil {
		return 0, err
	}
	return id, s.Block(id)
}

// UnblockPod lifts BlockPod.
func (s *Sensor) UnblockPod(uid string) (uint64, error) {
	id, err := s.podCgroup(uid)
	if err != nil {
		return 0, err
	}
	return id, s.Unblock(id)
}

// podCgroup finds the pod-level cgroup: from the identities seen, else by
// looking below the pod roots.
func (s *Sensor) podCgroup(uid string) (uint64, error) {
	if s.res == nil {
		return 0, errors.New("no cgroup mount to find pods in")
	}
	for _, id := range s.attr.OfPod(uid) {
		if id.PodPath != "" {
			if cg, err := s.res.ID(id.PodPath); err == nil {
				return cg, nil
			}
		}
	}
	us := strings.ReplaceAll(uid, "-", "_")
	var found string
	for _, r := range s.filt.PodRoots {
		root := filepath.Join(s.res.Root(), r)
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, root), "/") > 3 {
				return filepath.SkipDir // pods sit at most three levels below a root
			}
			if name := d.Name(); name == "pod"+uid || strings.HasSuffix(name, "-pod"+us+".slice") {
				found = strings.TrimPrefix(p, s.res.Root())
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			break
		}
	}
	if found == "" {
		return 0, fmt.Errorf("no cgroup of pod %s on this node", uid)
	}
	return s.res.ID(found)
}

func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown-boot"
	}
	return strings.TrimSpace(string(b))
}
