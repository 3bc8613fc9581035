package journalservice

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"parry.dev/parry/internal/journal"
)

// batchBuckets are the upper bounds of the batch size histogram.
var batchBuckets = []int{1, 4, 16, 64, 256, 1024}

// metrics are what /metrics serves.
type metrics struct {
	recorded, duplicates, unrecorded atomic.Uint64
	batchFailures                    atomic.Uint64
	// deliveries refused before recording, by status.
	refusedUnauthenticated, refusedForbidden, refusedUnavailable, refusedMalformed atomic.Uint64
	// read API decisions.
	readAllowed, readUnauthenticated, readForbidden, readUnavailable atomic.Uint64

	mu          sync.Mutex
	batches     [7]uint64 // per bucket of batchBuckets, and +Inf
	batchEvents uint64
	batchCount  uint64
	commitSecs  float64
}

func (m *metrics) committed(size, recorded int, took time.Duration, err error) {
	if errors.Is(err, journal.ErrUnstorable) {
		return // refused as malformed, and the rest recorded one by one
	}
	if err != nil {
		m.batchFailures.Add(1)
		m.unrecorded.Add(uint64(size))
	} else {
		m.recorded.Add(uint64(recorded))
		m.duplicates.Add(uint64(size - recorded))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	i := 0
	for i < len(batchBuckets) && size > batchBuckets[i] {
		i++
	}
	m.batches[i]++
	m.batchEvents += uint64(size)
	m.batchCount++
	m.commitSecs += took.Seconds()
}

func (m *metrics) refused(status int) {
	switch status {
	case http.StatusUnauthorized:
		m.refusedUnauthenticated.Add(1)
	case http.StatusForbidden:
		m.refusedForbidden.Add(1)
	case http.StatusServiceUnavailable:
		m.refusedUnavailable.Add(1)
	default:
		m.refusedMalformed.Add(1)
	}
}

func (m *metrics) read(status int) {
	switch status {
	case 0:
		m.readAllowed.Add(1)
	case http.StatusUnauthorized:
		m.readUnauthenticated.Add(1)
	case http.StatusForbidden:
		m.readForbidden.Add(1)
	default:
		m.readUnavailable.Add(1)
	}
}

// write is the Prometheus text exposition of m.
func (m *metrics) write(w http.ResponseWriter, wr *writer, pr *journal.Pruner) {
	var b strings.Builder
	metric := func(name, help, typ string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("parry_journal_events_total", "Events delivered and committed, by result: recorded (new) or duplicate (recorded before: a redelivery).", "counter")
	fmt.Fprintf(&b, "parry_journal_events_total{result=\"recorded\"} %d\n", m.recorded.Load())
	fmt.Fprintf(&b, "parry_journal_events_total{result=\"duplicate\"} %d\n", m.duplicates.Load())
	metric("parry_journal_events_unrecorded_total", "Events whose batch failed to commit: answered 503, for the broker to redeliver.", "counter")
	fmt.Fprintf(&b, "parry_journal_events_unrecorded_total %d\n", m.unrecorded.Load())
	metric("parry_journal_batch_failures_total", "Batches the database did not commit.", "counter")
	fmt.Fprintf(&b, "parry_journal_batch_failures_total %d\n", m.batchFailures.Load())
	metric("parry_journal_deliveries_refused_total", "Deliveries refused before recording, by reason.", "counter")
	for reason, v := range map[string]uint64{
		"unauthenticated": m.refusedUnauthenticated.Load(), "forbidden": m.refusedForbidden.Load(),
		"unavailable": m.refusedUnavailable.Load(), "malformed": m.refusedMalformed.Load(),
	} {
		fmt.Fprintf(&b, "parry_journal_deliveries_refused_total{reason=%q} %d\n", reason, v)
	}
	metric("parry_journal_api_requests_total", "Requests to the read API and /metrics by the authentication and authorization decision (unavailable: a review could not be made, so the request was refused).", "counter")
	for result, v := range map[string]uint64{
		"allowed": m.readAllowed.Load(), "unauthenticated": m.readUnauthenticated.Load(),
		"forbidden": m.readForbidden.Load(), "unavailable": m.readUnavailable.Load(),
	} {
		fmt.Fprintf(&b, "parry_journal_api_requests_total{result=%q} %d\n", result, v)
	}
	if pr != nil {
		events, bytes := pr.Pruned()
		metric("parry_journal_pruned_events_total", "Events deleted by the retention (age or size).", "counter")
		fmt.Fprintf(&b, "parry_journal_pruned_events_total %d\n", events)
		metric("parry_journal_pruned_bytes_total", "The deleted events' own bytes.", "counter")
		fmt.Fprintf(&b, "parry_journal_pruned_bytes_total %d\n", bytes)
	}
	metric("parry_journal_queued_events", "Events waiting for a commit.", "gauge")
	fmt.Fprintf(&b, "parry_journal_queued_events %d\n", wr.queued())
	m.mu.Lock()
	metric("parry_journal_batch_size", "Events per commit.", "histogram")
	var cum uint64
	for i, le := range batchBuckets {
		cum += m.batches[i]
		fmt.Fprintf(&b, "parry_journal_batch_size_bucket{le=\"%d\"} %d\n", le, cum)
	}
	cum += m.batches[len(batchBuckets)]
	fmt.Fprintf(&b, "parry_journal_batch_size_bucket{le=\"+Inf\"} %d\n", cum)
	fmt.Fprintf(&b, "parry_journal_batch_size_sum %d\nparry_journal_batch_size_count %d\n", m.batchEvents, m.batchCount)
	metric("parry_journal_commit_seconds", "Time to commit a batch.", "summary")
	fmt.Fprintf(&b, "parry_journal_commit_seconds_sum %g\nparry_journal_commit_seconds_count %d\n", m.commitSecs, m.batchCount)
	m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write([]byte(b.String()))
}
