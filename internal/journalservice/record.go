package journalservice

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/step"
)

// commitTimeout bounds one batch's commit; past it the batch's deliveries
// are answered 503 and redelivered.
const commitTimeout = 15 * time.Second

// errStopped answers deliveries that arrive while the service stops.
var errStopped = errors.New("the journal service is stopping")

// deliver records one event delivered by the journal's Trigger and answers
// 202 once it is committed: no body, so Knative sends no reply into the
// Broker.
func (s *Service) deliver(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	if !s.cfg.Callers.Admit(sw, r, s.log) {
		s.metrics.refused(sw.status)
		return
	}
	e, ok := step.ReadEvent(sw, r)
	if !ok {
		s.metrics.refused(sw.status)
		return
	}
	if err := e.Validate(); err != nil {
		s.metrics.refused(http.StatusBadRequest)
		http.Error(w, "not a valid CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	// No sender: the Trigger delivers every sender's events, and the
	// Broker's EventPolicies already decided who may send them.
	rec, err := journal.NewRecord(s.cfg.Broker, "", *e, nil)
	if err != nil {
		s.metrics.refused(http.StatusBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	err = s.writer.submit(r.Context(), rec)
	if errors.Is(err, journal.ErrUnstorable) {
		// Not a valid CloudEvent (a NUL, or bytes that are not UTF-8, in
		// an attribute): redelivering it cannot help.
		s.metrics.refused(http.StatusBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err != nil {
		// Debug: a failed commit is logged once for its whole batch.
		s.log.Debug().Err(err).Str(logging.FieldEventID, e.ID()).Str(logging.FieldEventType, e.Type()).
			Msg("an event was not recorded; answered 503 so the broker redelivers it")
		w.Header().Set("Retry-After", "1")
		http.Error(w, "not recorded, retry: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// statusWriter remembers the status of a refusal, for the metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// writer is the one goroutine that commits: deliveries queue, and each
// commit takes what queued while the previous one ran (group commit).
type writer struct {
	rec     Recorder
	batch   Batch
	metrics *metrics
	log     zerolog.Logger
	queue   chan *pendingRec
	quit    chan struct{}
	exited  chan struct{}
	once    sync.Once
}

type pendingRec struct {
	rec  journal.Record
	done chan error
}

func startWriter(rec Recorder, b Batch, m *metrics, log zerolog.Logger) *writer {
	w := &writer{rec: rec, batch: b, metrics: m, log: log,
		queue: make(chan *pendingRec, 2*b.Max), quit: make(chan struct{}), exited: make(chan struct{})}
	go w.run()
	return w
}

// submit queues rec and waits for its commit. An error means it may not
// be recorded.
func (w *writer) submit(ctx context.Context, rec journal.Record) error {
	p := &pendingRec{rec: rec, done: make(chan error, 1)}
	select {
	case w.queue <- p:
	case <-w.quit:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-p.done:
		return err
	case <-w.exited:
		// Queued after the last commit: nobody will commit it.
		select {
		case err := <-p.done:
			return err
		default:
			return errStopped
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *writer) run() {
	defer close(w.exited)
	linger := time.NewTimer(0)
	<-linger.C
	for {
		var first *pendingRec
		select {
		case first = <-w.queue:
		case <-w.quit:
			w.drain()
			return
		}
		batch := []*pendingRec{first}
		linger.Reset(w.batch.Linger)
	fill:
		for len(batch) < w.batch.Max {
			select {
			case p := <-w.queue:
				batch = append(batch, p)
			case <-linger.C:
				break fill
			case <-w.quit:
				break fill
			}
		}
		if !linger.Stop() {
			select {
			case <-linger.C:
			default:
			}
		}
		w.commit(batch)
	}
}

// drain commits what is queued when the service stops.
func (w *writer) drain() {
	for {
		var batch []*pendingRec
	take:
		for len(batch) < w.batch.Max {
			select {
			case p := <-w.queue:
				batch = append(batch, p)
			default:
				break take
			}
		}
		if len(batch) == 0 {
			return
		}
		w.commit(batch)
	}
}

func (w *writer) commit(batch []*pendingRec) {
	err := w.record(batch)
	if errors.Is(err, journal.ErrUnstorable) && len(batch) > 1 {
		// One event the store cannot hold fails its whole batch: record
		// the others one by one, so only that event is refused.
		for _, p := range batch {
			p.done <- w.record([]*pendingRec{p})
		}
		return
	}
	if err != nil {
		w.log.Error().Err(err).Int("events", len(batch)).Msg("a batch of events could not be committed; their deliveries are answered 503 and redelivered")
	}
	for _, p := range batch {
		p.done <- err
	}
}

// record commits batch in one transaction.
func (w *writer) record(batch []*pendingRec) error {
	recs := make([]journal.Record, len(batch))
	for i, p := range batch {
		recs[i] = p.rec
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	began := time.Now()
	n, err := w.rec.Record(ctx, recs)
	w.metrics.committed(len(batch), n, time.Since(began), err)
	return err
}

// stop commits what is queued and ends the writer.
func (w *writer) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.exited
}

// queued is how many events wait for a commit.
func (w *writer) queued() int { return len(w.queue) }
