package sensor

import "time"

// A wake-up of the reader costs tens of µs of scheduler work whatever it
// carries (about 57 µs in the CI VM, against about 1.3 µs to handle an
// exec-storm record), so at the 10 ms default a storm of a few thousand
// records per second spends more CPU waking than reading. The pacer
// stretches the interval while the rate stays above stormRate, so that a
// wake-up carries about stormBatch records, up to
// Config.StormWakeupInterval; at ordinary rates, and from the first record
// after a quiet spell, it is Config.WakeupInterval again.
const (
	stormRate  = 1000 // records/s over a window: the interval stretches above it
	calmRate   = 500  // records/s over a window: and is back to the base below it
	stormBatch = 128  // records a stretched wake-up aims to carry
	// paceWindow is the span the rate is judged over: a burst of a few
	// records within one interval is not a storm.
	paceWindow = 100 * time.Millisecond
)

// pacer picks the wake-up interval from the rate records arrive at. It
// belongs to the reader goroutine.
type pacer struct {
	base, max time.Duration
	cur       time.Duration
	storm     bool
	records   int           // read in the current window
	span      time.Duration // length of the current window so far
}

func newPacer(base, max time.Duration) pacer {
	return pacer{base: base, max: max, cur: base}
}

// woke takes the records read since the previous wake-up and the time
// since it, and returns the interval for what follows.
func (p *pacer) woke(records int, since time.Duration) time.Duration {
	if p.max <= p.base {
		return p.base
	}
	if since > 2*p.cur {
		// woken by a record after a quiet spell: whatever storm there was is over
		p.storm, p.records, p.span, p.cur = false, 0, 0, p.base
		return p.cur
	}
	p.records += records
	p.span += since
	if p.span < paceWindow {
		return p.cur
	}
	rate := float64(p.records) / p.span.Seconds()
	p.records, p.span = 0, 0
	switch {
	case rate >= stormRate:
		p.storm = true
	case rate < calmRate:
		p.storm = false
	}
	p.cur = p.base
	if p.storm {
		batch := time.Duration(stormBatch / rate * float64(time.Second)).Round(time.Millisecond)
		p.cur = max(p.base, min(p.max, batch))
	}
	return p.cur
}
