package sensor

import (
	"os"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/kernel"
)

// Health returns the current counters.
func (s *Sensor) Health() api.Health {
	h := api.Health{
		Node: s.cfg.Node, BootID: s.bootID, Started: s.start,
		UptimeSec: int64(time.Since(s.start).Seconds()),
		Hooks:     s.k.Hooks(),
		Recorder:  s.rec.Stats(),
		Cgroups:   s.attr.Len(),
		RSSBytes:  rss(),
	}
	s.st.fill(&h, s.start, s.kernelCounters(), s.emitterStats())
	return h
}

// lost is the loss total, from the counters only (the housekeeper polls it
// every second; Health also reads /proc and the tables).
func (s *Sensor) lost() uint64 {
	_, n := s.st.losses(s.kernelCounters(), s.emitterStats())
	return n
}

func (s *Sensor) emitterStats() *api.EmitterStats {
	if s.em == nil {
		return nil
	}
	st := s.em.Stats()
	return &st
}

func (s *Sensor) kernelCounters() kernel.Counts {
	c, err := s.k.Counters()
	if err != nil {
		s.log.Error().Err(err).Msg("reading kernel counters")
	}
	return c
}

// housekeeper is the sensor's periodic work: health reports, and each
// second the boot clock, every 2s the scope roots (a kubelet started after
// the sensor), every 10s the attribution and recorder sweeps.
func (s *Sensor) housekeeper() *housekeeper {
	return &housekeeper{
		healthInterval: s.cfg.HealthInterval,
		lost:           s.lost,
		health:         s.Health,
		send:           s.sendHealth,
		log:            s.log,
		jobs: []job{
			{every: 0, run: func(time.Time) { s.clock.refresh() }},
			{every: 2 * time.Second, run: func(time.Time) { s.rescanScope() }},
			{every: 10 * time.Second, run: func(now time.Time) {
				s.attr.Sweep(now)
				s.rec.Sweep(now)
			}},
		},
	}
}

// sendHealth emits a health event (none without a sink).
func (s *Sensor) sendHealth(h api.Health, seq uint64) {
	if s.em == nil {
		return
	}
	ev, err := s.mapper.health(h, s.start, seq)
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
