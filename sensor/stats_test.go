package sensor

import (
	"testing"
	"time"

	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/wire"
)

func TestStatsFill(t *testing.T) {
	var st stats
	start := time.Unix(1700000000, 0)
	st.received[wire.KindConnect].Store(90)
	st.received[wire.KindExec].Store(5)
	st.malformed.Store(1)
	st.buildErrs.Store(2)
	st.emitted.Store(80)
	st.interval.Store(int64(10 * time.Millisecond))
	st.firstRec.Store(start.Add(250 * time.Millisecond).UnixNano())
	var c kernel.Counts
	c.Seen[wire.KindConnect], c.Dropped[wire.KindConnect] = 100, 6
	c.Seen[wire.KindExec] = 5
	em := &api.EmitterStats{SpoolOverflow: 3, Rejected: 4}

	var h api.Health
	st.fill(&h, start, c, em)
	if k := h.Kinds["connect"]; k.Seen != 100 || k.Received != 90 || k.Dropped != 6 || k.InFlight != 4 {
		t.Errorf("connect counts %+v", k)
	}
	if k := h.Kinds["exec"]; k.InFlight != 0 || k.Received != 5 {
		t.Errorf("exec counts %+v", k)
	}
	if len(h.Kinds) != int(wire.NumKinds)-1 {
		t.Errorf("kinds %v", h.Kinds)
	}
	want := api.Loss{RingBuffer: 6, Malformed: 1, Build: 2, SpoolOverflow: 3, Rejected: 4}
	if h.Lost != want || h.LostTotal != 16 {
		t.Errorf("lost %+v total %d", h.Lost, h.LostTotal)
	}
	if h.Emitted != 80 || h.WakeupIntervalUs != 10000 || h.StartupMs != 250 || h.Emitter != em {
		t.Errorf("health %+v", h)
	}
	if _, n := st.losses(c, nil); n != 9 {
		t.Errorf("losses without an emitter: %d", n)
	}
}
