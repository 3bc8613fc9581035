package sensor

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/api"
)

// housekeeper runs the periodic work, off the reader goroutine: health
// reports every health interval, and within a second of any loss (the
// kernel's drops show in its counters, polled each second; losses in
// userspace kick it at once); and jobs at their own periods.
type housekeeper struct {
	healthInterval time.Duration
	lost           func() uint64                  // the loss total, from counters only
	health         func() api.Health              // a full report
	send           func(h api.Health, seq uint64) // seq numbers the reports
	jobs           []job
	log            zerolog.Logger

	lastLoss   uint64    // the loss total of the last report
	lastHealth time.Time // when it was sent
	seq        uint64
}

// job is periodic work; every zero runs it on each tick (once a second).
type job struct {
	every time.Duration
	run   func(now time.Time)
	last  time.Time
}

// report sends a health report when forced, when something was lost since
// the last one and that is a second ago, or when the interval is over.
func (hk *housekeeper) report(now time.Time, force bool) {
	newLoss := hk.lost() > hk.lastLoss
	if !force && !(newLoss && now.Sub(hk.lastHealth) >= time.Second) && now.Sub(hk.lastHealth) < hk.healthInterval {
		return
	}
	h := hk.health()
	h.NewLoss = h.LostTotal > hk.lastLoss
	if h.NewLoss {
		hk.log.Warn().Uint64("lost_total", h.LostTotal).Interface("lost", h.Lost).Msg("events lost")
	}
	hk.seq++
	hk.send(h, hk.seq)
	hk.lastHealth, hk.lastLoss = now, h.LostTotal
}

// kicked reports a loss in userspace at once, unless a report went out
// within the second: then the next tick reports it.
func (hk *housekeeper) kicked(now time.Time) {
	if now.Sub(hk.lastHealth) >= time.Second {
		hk.report(now, false)
	}
}

// tick is the work of one second: a report if one is due, and the jobs
// whose period is over, in order.
func (hk *housekeeper) tick(now time.Time) {
	hk.report(now, false)
	for i := range hk.jobs {
		if j := &hk.jobs[i]; now.Sub(j.last) >= j.every {
			j.run(now)
			j.last = now
		}
	}
}

// run reports at once (the first report says which hooks run), then ticks
// each second until ctx is done.
func (hk *housekeeper) run(ctx context.Context, lossKick <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	for i := range hk.jobs {
		hk.jobs[i].last = start
	}
	hk.report(start, true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-lossKick:
			hk.kicked(time.Now())
		case <-t.C:
			hk.tick(time.Now())
		}
	}
}
