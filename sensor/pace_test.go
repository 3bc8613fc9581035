package sensor

import (
	"testing"
	"time"
)

func TestPacer(t *testing.T) {
	const base, storm = 10 * time.Millisecond, 40 * time.Millisecond
	// feed wakes the pacer every interval it asks for with records at rate
	// per second, for d, and returns the last interval.
	feed := func(p *pacer, rate float64, d time.Duration) time.Duration {
		iv := p.cur
		for elapsed := time.Duration(0); elapsed < d; elapsed += iv {
			iv = p.woke(int(rate*iv.Seconds()), iv)
		}
		return iv
	}

	p := newPacer(base, storm)
	if iv := feed(&p, 300, time.Second); iv != base {
		t.Errorf("300 records/s: interval %s, want the base %s", iv, base)
	}
	if iv := feed(&p, 3000, time.Second); iv != storm {
		t.Errorf("3,000 records/s: interval %s, want the storm bound %s (128 records need 43ms)", iv, storm)
	}
	if iv := feed(&p, 6400, time.Second); iv != 20*time.Millisecond {
		t.Errorf("6,400 records/s: interval %s, want 20ms (128 records a wake-up)", iv)
	}
	if iv := feed(&p, 50000, time.Second); iv != base {
		t.Errorf("50,000 records/s: interval %s, want the base %s (128 records come sooner)", iv, base)
	}
	// Between the two thresholds the storm goes on, and below the lower
	// one it is over.
	feed(&p, 3000, time.Second)
	if iv := feed(&p, 700, time.Second); iv != storm {
		t.Errorf("700 records/s after a storm: interval %s, want %s still", iv, storm)
	}
	if iv := feed(&p, 300, time.Second); iv != base {
		t.Errorf("300 records/s after a storm: interval %s, want the base %s", iv, base)
	}

	// A burst shorter than the window is not a storm.
	p = newPacer(base, storm)
	if iv := p.woke(30, base); iv != base {
		t.Errorf("one busy interval: %s, want the base %s", iv, base)
	}

	// The first record after a quiet spell ends a storm at once.
	p = newPacer(base, storm)
	feed(&p, 3000, time.Second)
	if iv := p.woke(1, time.Second); iv != base {
		t.Errorf("woken after a quiet second: %s, want the base %s", iv, base)
	}

	// Stretching off.
	p = newPacer(base, base)
	if iv := feed(&p, 3000, time.Second); iv != base {
		t.Errorf("storm bound at the base: interval %s, want %s", iv, base)
	}
}
