package sensor

import (
	"time"

	"parry.dev/parry/sensor/api"
	"parry.dev/parry/sensor/internal/attrib"
	"parry.dev/parry/sensor/internal/wire"
)

// pending holds the events of pods the API server has not told the
// informer about yet (created a moment ago), up to a deadline, so they
// leave with the pod's name. A pod's events wait together and leave in
// order. It belongs to the reader goroutine.
type pending struct {
	pods     attrib.PodSource // nil: no cluster, nothing waits
	wait     time.Duration    // how long an event may wait; <= 0: none does
	interval time.Duration    // how often tick releases

	events      []waitingEvent
	perPod      map[string]int // waiting events by pod UID
	lastRelease time.Time      // the last time tick released
}

type waitingEvent struct {
	rec      wire.Record
	id       *attrib.Identity
	ev       api.RecordedEvent
	n        uint32 // coalesced before it
	deadline time.Time
}

// maxWaiting bounds the queue; past it, events leave without waiting.
const maxWaiting = 4096

func newPending(pods attrib.PodSource, wait, interval time.Duration) pending {
	return pending{pods: pods, wait: wait, interval: interval, perPod: map[string]int{}}
}

// waiting reports whether any event waits.
func (q *pending) waiting() bool { return len(q.events) > 0 }

// mustWait: the cluster is known and synced, the record is from a pod, but
// the informer has not seen the pod yet; or events of its pod wait already,
// and it must not overtake them.
func (q *pending) mustWait(id *attrib.Identity) bool {
	if q.pods == nil || !id.InPod() || q.wait <= 0 {
		return false
	}
	if q.perPod[id.PodUID] > 0 {
		return true
	}
	if !q.pods.Synced() || len(q.events) >= maxWaiting {
		return false
	}
	_, ok := q.pods.Pod(id.PodUID)
	return !ok
}

// hold queues an event until its pod is known or its wait is over.
func (q *pending) hold(r *wire.Record, id *attrib.Identity, ev api.RecordedEvent, n uint32, now time.Time) {
	q.events = append(q.events, waitingEvent{rec: *r, id: id, ev: ev, n: n, deadline: now.Add(q.wait)})
	q.perPod[id.PodUID]++
}

// release passes to emit, in order, the events whose pod is now known or
// whose wait is over, keeping each pod's order.
func (q *pending) release(now time.Time, emit func(*waitingEvent)) {
	kept := q.events[:0]
	blocked := map[string]bool{}
	for i := range q.events {
		w := &q.events[i]
		uid := w.id.PodUID
		_, known := q.pods.Pod(uid)
		if !blocked[uid] && (known || now.After(w.deadline)) {
			emit(w)
			if q.perPod[uid]--; q.perPod[uid] <= 0 {
				delete(q.perPod, uid)
			}
			continue
		}
		blocked[uid] = true
		kept = append(kept, *w)
	}
	clear(q.events[len(kept):])
	q.events = kept
}

// tick releases at most once per interval.
func (q *pending) tick(now time.Time, emit func(*waitingEvent)) {
	if len(q.events) > 0 && now.Sub(q.lastRelease) >= q.interval {
		q.release(now, emit)
		q.lastRelease = now
	}
}

// deadline is when the reader must wake for tick even if no record comes
// (stable until tick releases); zero when nothing waits.
func (q *pending) deadline() time.Time {
	if len(q.events) == 0 {
		return time.Time{}
	}
	return q.lastRelease.Add(q.interval)
}
