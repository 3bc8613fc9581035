package sensor

import (
	"sync/atomic"
	"time"

	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/wire"
)

// stats are the sensor's own counters, cumulative since it started. The
// reader goroutine counts; Health, the housekeeping loop and the HTTP API
// read at any time.
type stats struct {
	received  [wire.NumKinds]atomic.Uint64
	malformed atomic.Uint64 // records that did not parse
	coalesced atomic.Uint64 // events suppressed as identical
	outScope  atomic.Uint64 // records outside the pods scope (v1: applied here)
	buildErrs atomic.Uint64 // events that could not be built
	emitted   atomic.Uint64 // events queued for the sink
	wakeups   atomic.Uint64 // times the reader slept and was woken
	stretched atomic.Uint64 // of them, at an interval stretched by a storm
	interval  atomic.Int64  // the kernel's current wake-up interval, ns
	kicks     atomic.Uint64 // flush timer kicks (see readLoop)
	kickErrs  atomic.Uint64
	firstRec  atomic.Int64 // unix ns of the first record, for start-up time
}

// fill puts the counters into h, with the kernel's per-kind counts and the
// emitter's (nil without a sink): per kind, seen = received + dropped +
// in flight; every loss totalled.
func (st *stats) fill(h *api.Health, started time.Time, c kernel.Counts, em *api.EmitterStats) {
	h.Kinds = make(map[string]api.KindCounts, wire.NumKinds-1)
	for k := wire.KindExec; k < wire.NumKinds; k++ {
		kc := api.KindCounts{Seen: c.Seen[k], Dropped: c.Dropped[k], Received: st.received[k].Load()}
		if kc.Seen > kc.Dropped+kc.Received {
			kc.InFlight = kc.Seen - kc.Dropped - kc.Received
		}
		h.Kinds[k.String()] = kc
	}
	h.Emitted = st.emitted.Load()
	h.Coalesced = st.coalesced.Load()
	h.OutOfScope = st.outScope.Load()
	h.Wakeups = st.wakeups.Load()
	h.StretchedWakeups = st.stretched.Load()
	h.WakeupIntervalUs = st.interval.Load() / 1e3
	h.FlushKicks = st.kicks.Load()
	if f := st.firstRec.Load(); f != 0 {
		h.StartupMs = (f - started.UnixNano()) / 1e6
	}
	h.Emitter = em
	h.Lost, h.LostTotal = st.losses(c, em)
}

// losses totals what was lost: the kernel's drops, and the records and
// events lost here and in the emitter. It reads only counters, so the
// housekeeping loop polls it every second.
func (st *stats) losses(c kernel.Counts, em *api.EmitterStats) (api.Loss, uint64) {
	var l api.Loss
	for k := wire.KindExec; k < wire.NumKinds; k++ {
		l.RingBuffer += c.Dropped[k]
	}
	l.Malformed = st.malformed.Load()
	l.Build = st.buildErrs.Load()
	if em != nil {
		l.SpoolOverflow, l.Rejected = em.SpoolOverflow, em.Rejected
	}
	return l, l.RingBuffer + l.Malformed + l.Build + l.SpoolOverflow + l.Rejected
}
