package sensor

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/api"
)

func TestHousekeeper(t *testing.T) {
	var lost uint64
	var sent []api.Health
	var seqs []uint64
	runs := map[string]int{}
	hk := &housekeeper{
		healthInterval: 30 * time.Second,
		lost:           func() uint64 { return lost },
		health:         func() api.Health { return api.Health{LostTotal: lost} },
		send: func(h api.Health, seq uint64) {
			sent = append(sent, h)
			seqs = append(seqs, seq)
		},
		log: zerolog.Nop(),
		jobs: []job{
			{every: 0, run: func(time.Time) { runs["clock"]++ }},
			{every: 10 * time.Second, run: func(time.Time) { runs["sweep"]++ }},
		},
	}
	t0 := time.Unix(1700000000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for i := range hk.jobs {
		hk.jobs[i].last = t0
	}

	hk.report(t0, true)
	if len(sent) != 1 || sent[0].NewLoss {
		t.Fatalf("forced first report: %+v", sent)
	}
	for s := 1; s <= 9; s++ {
		hk.tick(at(float64(s)))
	}
	if len(sent) != 1 || runs["clock"] != 9 || runs["sweep"] != 0 {
		t.Fatalf("quiet ticks: %d reports, runs %v", len(sent), runs)
	}
	hk.tick(at(10))
	if runs["sweep"] != 1 {
		t.Errorf("sweep after 10s: %v", runs)
	}

	// a loss is reported on the next tick, as a new loss
	lost = 5
	hk.tick(at(11))
	if len(sent) != 2 || !sent[1].NewLoss {
		t.Fatalf("loss not reported: %+v", sent)
	}
	// a userspace kick within the second waits for the tick
	lost = 6
	hk.kicked(at(11.5))
	if len(sent) != 2 {
		t.Fatal("reported twice within a second")
	}
	hk.kicked(at(12))
	if len(sent) != 3 || !sent[2].NewLoss || sent[2].LostTotal != 6 {
		t.Fatalf("kick a second later: %+v", sent)
	}
	// no news: the next report at the interval, and not a loss
	hk.tick(at(41))
	if len(sent) != 3 {
		t.Fatal("reported before the interval")
	}
	hk.tick(at(42))
	if len(sent) != 4 || sent[3].NewLoss {
		t.Fatalf("interval report: %+v", sent)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Errorf("report %d has seq %d", i, s)
		}
	}
}
