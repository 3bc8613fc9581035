package sensor

import (
	"testing"
	"time"

	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/cgroups"
	"parry.dev/parry/sensor/internal/wire"
)

func podIdentity(uid string) *attrib.Identity {
	return &attrib.Identity{CgroupID: 1, PodRef: cgroups.PodRef{PodUID: uid}}
}

func TestPending(t *testing.T) {
	pods := &fakePods{m: map[string]attrib.PodMeta{"known": {UID: "known"}}}
	q := newPending(pods, time.Second, 10*time.Millisecond)
	a, b := podIdentity("a"), podIdentity("b")
	t0 := time.Unix(1700000000, 0)

	if q.mustWait(podIdentity("known")) || q.mustWait(&attrib.Identity{CgroupID: 2}) {
		t.Fatal("a known pod's or a non-pod's event waits")
	}
	if !q.mustWait(a) {
		t.Fatal("an unknown pod's event does not wait")
	}
	var released []uint32
	emit := func(w *waitingEvent) { released = append(released, w.rec.PID) }
	q.hold(&wire.Record{PID: 1}, a, recorderEvent(&wire.Record{}, t0, 1, ""), 0, t0)
	q.hold(&wire.Record{PID: 2}, b, recorderEvent(&wire.Record{}, t0, 1, ""), 0, t0.Add(500*time.Millisecond))
	q.hold(&wire.Record{PID: 3}, a, recorderEvent(&wire.Record{}, t0, 1, ""), 0, t0.Add(600*time.Millisecond))
	if !q.waiting() || q.deadline().IsZero() {
		t.Fatal("nothing waits")
	}

	// b becomes known: its event leaves, a's two stay
	pods.add(attrib.PodMeta{UID: "b"})
	q.release(t0.Add(700*time.Millisecond), emit)
	if len(released) != 1 || released[0] != 2 || len(q.events) != 2 {
		t.Fatalf("released %v, %d left", released, len(q.events))
	}
	// a pod's later events wait behind its first, even once that is known
	if !q.mustWait(a) {
		t.Error("a new event of a pod with waiting events overtakes them")
	}
	// a's first event's wait is over, its second's not yet: the first
	// leaves; then the second at its own deadline
	q.release(t0.Add(1100*time.Millisecond), emit)
	if len(released) != 2 || released[1] != 1 {
		t.Fatalf("released %v", released)
	}
	q.release(t0.Add(1700*time.Millisecond), emit)
	if len(released) != 3 || released[2] != 3 || q.waiting() || len(q.perPod) != 0 || !q.deadline().IsZero() {
		t.Fatalf("released %v, waiting %v, per pod %v", released, q.waiting(), q.perPod)
	}

	// tick releases at most once per interval
	q.hold(&wire.Record{PID: 4}, a, recorderEvent(&wire.Record{}, t0, 1, ""), 0, t0)
	q.tick(t0.Add(2*time.Second), emit)
	if len(released) != 4 {
		t.Fatalf("tick did not release: %v", released)
	}
	q.hold(&wire.Record{PID: 5}, a, recorderEvent(&wire.Record{}, t0, 1, ""), 0, t0)
	q.tick(t0.Add(2*time.Second+time.Millisecond), emit)
	if len(released) != 4 || q.deadline() != t0.Add(2*time.Second+10*time.Millisecond) {
		t.Errorf("tick released within the interval: %v; deadline %v", released, q.deadline())
	}

	if none := newPending(nil, time.Second, time.Millisecond); none.mustWait(a) {
		t.Error("an event waits without a cluster")
	}
}
