package sensor

import (
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/filters"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/recorder"
	"parry.dev/parry/sensor/internal/wire"
)

// pipeline is the reader's hot path: one ring-buffer record in, an entry
// in the flight recorder and at most one CloudEvent out. Its parts own
// their state: the coalescer, the pending queue, the event mapper, the
// exe table; the counters are the sensor's (stats). It runs on the reader
// goroutine only, so none of it needs a lock.
type pipeline struct {
	log    zerolog.Logger
	parser wire.Parser
	rec0   wire.Record // the record being handled, reused

	clock *bootClock
	attr  *attrib.Attributor
	v1    *v1Scope // non-nil: attribute by the v1 memory cgroup, scope applied here
	rec   *recorder.Recorder
	sink  eventSink // nil: the recorder only
	st    *stats

	exes      exeTable
	co        coalescer
	pend      pending
	mapper    eventMapper
	lastSweep time.Time     // the last once-a-second tick
	loss      chan struct{} // kicks the housekeeping loop
}

// eventSink queues events for delivery (emit.Emitter).
type eventSink interface {
	Emit(cloudevents.Event)
}

// pipelineDeps are what a pipeline uses and does not own.
type pipelineDeps struct {
	cfg    Config // CoalesceWindow, AttributionWait, WakeupInterval
	log    zerolog.Logger
	mapper eventMapper
	clock  *bootClock
	attr   *attrib.Attributor
	pods   attrib.PodSource // nil without a cluster
	v1     *v1Scope
	rec    *recorder.Recorder
	sink   eventSink // nil: no events, the recorder only
	st     *stats
	loss   chan struct{}
}

func newPipeline(d pipelineDeps) *pipeline {
	return &pipeline{
		log: d.log, clock: d.clock, attr: d.attr, v1: d.v1, rec: d.rec, sink: d.sink, st: d.st, loss: d.loss,
		exes:   newExeTable(),
		co:     newCoalescer(d.cfg.CoalesceWindow),
		pend:   newPending(d.pods, d.cfg.AttributionWait, d.cfg.WakeupInterval),
		mapper: d.mapper,
	}
}

// handle is the hot path.
func (p *pipeline) handle(raw []byte) {
	r := &p.rec0
	if err := p.parser.Parse(raw, r); err != nil {
		if n := p.st.malformed.Add(1); n == 1 || n%1000 == 0 {
			p.log.Error().Err(err).Uint64("malformed", n).Msg("ring-buffer record dropped (counted)")
		}
		p.kickLoss()
		return
	}
	if p.st.firstRec.Load() == 0 {
		p.st.firstRec.Store(time.Now().UnixNano())
	}
	p.st.received[r.Kind].Add(1)
	cg := r.CgroupID
	if p.v1 != nil {
		cg = r.MemcgID
	}
	t := p.clock.wall(r.Ktime)
	id := p.attr.Identify(cg, r.CgroupLeaf, r.CgroupParent, t)
	if p.v1 != nil && !p.v1.contains(id) {
		p.st.outScope.Add(1)
		return
	}
	exe := p.exes.track(r)
	ev := recorderEvent(r, t, cg, exe)
	p.rec.Add(id, ev)
	if p.sink == nil {
		return
	}
	n, ok := p.co.check(r, cg, t)
	if !ok {
		p.st.coalesced.Add(1)
		return
	}
	if p.pend.waiting() {
		p.pend.release(time.Now(), p.emitWaiting)
	}
	if p.pend.mustWait(id) {
		p.pend.hold(r, id, ev, n, time.Now())
		return
	}
	p.emit(r, id, &ev, n)
}

// tick runs after every drain: at most once per wake-up interval it
// releases waiting events, and at most once a second it sweeps the
// coalescing table and trims the exe table.
func (p *pipeline) tick(now time.Time) {
	p.pend.tick(now, p.emitWaiting)
	if now.Sub(p.lastSweep) < time.Second {
		return
	}
	p.lastSweep = now
	p.co.sweep(now)
	p.exes.trim()
}

// deadline is when the reader must wake even if no record comes (events
// wait for their pod's name); zero when it may sleep until one does.
func (p *pipeline) deadline() time.Time { return p.pend.deadline() }

// emit builds the CloudEvent for a record and queues it.
func (p *pipeline) emit(r *wire.Record, id *attrib.Identity, ev *api.RecordedEvent, coalesced uint32) {
	ce, err := p.mapper.build(r, id, ev, coalesced)
	if err != nil {
		p.st.buildErrs.Add(1)
		p.log.Error().Err(err).Msg("building event (dropped, counted)")
		p.kickLoss()
		return
	}
	p.sink.Emit(ce)
	p.st.emitted.Add(1)
}

func (p *pipeline) emitWaiting(w *waitingEvent) { p.emit(&w.rec, w.id, &w.ev, w.n) }

// kickLoss tells the housekeeping loop about a loss, without waiting.
func (p *pipeline) kickLoss() {
	select {
	case p.loss <- struct{}{}:
	default:
	}
}

// v1Scope applies the pods scope in userspace on cgroup v1 attribution
// (the kernel cannot test v1 ancestry cheaply).
type v1Scope struct {
	pods  bool     // scope: pods; else every process is in scope
	roots []string // the pod roots, "/kubepods" and the like
}

func newV1Scope(f filters.Config) *v1Scope {
	s := &v1Scope{pods: f.Scope == "pods"}
	for _, r := range f.PodRoots {
		s.roots = append(s.roots, "/"+r)
	}
	return s
}

func (s *v1Scope) contains(id *attrib.Identity) bool {
	if !s.pods {
		return true
	}
	for _, r := range s.roots {
		if id.CgroupPath == r || strings.HasPrefix(id.CgroupPath, r+"/") {
			return true
		}
	}
	return id.InPod()
}

// bootClock ties CLOCK_BOOTTIME (record times) to the wall clock.
type bootClock struct {
	offset atomic.Int64 // wall-clock ns minus CLOCK_BOOTTIME ns
}

// refresh measures the offset again; the housekeeping loop calls it each
// second, so NTP steps are followed.
func (c *bootClock) refresh() {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return
	}
	c.offset.Store(time.Now().UnixNano() - ts.Nano())
}

// wall is the wall-clock time of a kernel time.
func (c *bootClock) wall(ktime uint64) time.Time {
	return time.Unix(0, c.offset.Load()+int64(ktime))
}
