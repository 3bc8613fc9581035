package sensor

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/wire"
)

// Health returns the current counters.
func (s *Sensor) Health() api.Health {
	h := api.Health{
		Node: s.cfg.Node, BootID: s.bootID, Started: s.start,
		UptimeSec:        int64(time.Since(s.start).Seconds()),
		Hooks:            s.k.Hooks(),
		Kinds:            map[string]api.KindCounts{},
		Emitted:          s.emitted.Load(),
		Coalesced:        s.coalesced.Load(),
		OutOfScope:       s.outScope.Load(),
		Recorder:         s.rec.Stats(),
		Cgroups:          s.attr.Len(),
		Wakeups:          s.wakeups.Load(),
		StretchedWakeups: s.stretched.Load(),
		WakeupIntervalUs: s.interval.Load() / 1e3,
		FlushKicks:       s.kicks.Load(),
		RSSBytes:         rss(),
	}
	if f := s.firstRec.Load(); f != 0 {
		h.StartupMs = (f - s.start.UnixNano()) / 1e6
	}
	c := s.kernelCounters()
	for k := wire.KindExec; k < wire.NumKinds; k++ {
		kc := api.KindCounts{Seen: c.Seen[k], Dropped: c.Dropped[k], Received: s.received[k].Load()}
		if kc.Seen > kc.Dropped+kc.Received {
			kc.InFlight = kc.Seen - kc.Dropped - kc.Received
		}
		h.Kinds[k.String()] = kc
	}
	if s.em != nil {
		st := s.em.Stats()
		h.Emitter = &st
	}
	h.Lost, h.LostTotal = s.losses(c, h.Emitter)
	return h
}

// losses totals what was lost; the housekeeping loop polls it every second,
// so it reads only counters (Health also reads /proc and the tables).
func (s *Sensor) losses(c kernel.Counts, em *api.EmitterStats) (api.Loss, uint64) {
	var l api.Loss
	for k := wire.KindExec; k < wire.NumKinds; k++ {
		l.RingBuffer += c.Dropped[k]
	}
	l.Malformed = s.malformed.Load()
	l.Build = s.buildErrs.Load()
	if em != nil {
		l.SpoolOverflow, l.Rejected = em.SpoolOverflow, em.Rejected
	}
	return l, l.RingBuffer + l.Malformed + l.Build + l.SpoolOverflow + l.Rejected
}

func (s *Sensor) kernelCounters() kernel.Counts {
	c, err := s.k.Counters()
	if err != nil {
		s.log.Error().Err(err).Msg("reading kernel counters")
	}
	return c
}

// housekeeping runs the periodic work: loss detection (kernel drops are
// polled every second; userspace losses kick it at once), health events at
// most once a second on loss and every HealthInterval otherwise, sweeps of
// the caches, and the scope roots.
func (s *Sensor) housekeeping(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastLoss uint64
	var lastHealth time.Time
	lastSweep, lastScope := time.Now(), time.Now()
	report := func(now time.Time, force bool) {
		var em *api.EmitterStats
		if s.em != nil {
			st := s.em.Stats()
			em = &st
		}
		_, lost := s.losses(s.kernelCounters(), em)
		newLoss := lost > lastLoss
		if !force && !(newLoss && now.Sub(lastHealth) >= time.Second) && now.Sub(lastHealth) < s.cfg.HealthInterval {
			return
		}
		h := s.Health()
		h.NewLoss = h.LostTotal > lastLoss
		if h.NewLoss {
			s.log.Warn().Uint64("lost_total", h.LostTotal).Interface("lost", h.Lost).Msg("events lost")
		}
		s.sendHealth(h)
		lastHealth, lastLoss = now, h.LostTotal
	}
	report(time.Now(), true) // the first one says which hooks run
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.lossKick:
			if now := time.Now(); now.Sub(lastHealth) >= time.Second {
				report(now, false)
			} // else the next tick reports it
			continue
		case <-t.C:
		}
		now := time.Now()
		report(now, false)
		s.refreshBootOffset()
		if now.Sub(lastScope) >= 2*time.Second {
			s.rescanScope()
			lastScope = now
		}
		if now.Sub(lastSweep) >= 10*time.Second {
			s.attr.Sweep(now)
			s.rec.Sweep(now)
			lastSweep = now
		}
	}
}

func (s *Sensor) sendHealth(h api.Health) {
	if s.em == nil {
		return
	}
	seq := s.healthSeq.Add(1)
	sev := "info"
	if h.NewLoss {
		sev = "warning"
	}
	ev, err := events.New(events.Spec{
		Type:    events.TypeSensorHealth,
		Source:  s.cfg.Source,
		Subject: "node/" + s.cfg.Node,
		Key:     s.bootID + "/health/" + strconv.FormatInt(s.start.UnixNano(), 10) + "/" + strconv.FormatUint(seq, 10),
		Extensions: map[string]string{
			events.ExtNode:     s.cfg.Node,
			events.ExtSeverity: sev,
		},
		Data: h,
	})
	if err != nil {
		s.log.Error().Err(err).Msg("building health event")
		return
	}
	s.em.Emit(ev)
}

// rss reads this process's resident set size.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
