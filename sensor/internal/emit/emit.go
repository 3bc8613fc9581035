// Package emit delivers the sensor's CloudEvents to the sink (K_SINK) in
// HTTP binary mode, in order, without blocking the kernel reader.
//
// Events wait in a bounded memory queue. When the sink is down or slow and
// the queue fills, new events go to a bounded on-disk spool; from then on
// every new event goes to the spool until both are drained, so delivery
// order is the emission order. What the spool cannot hold is counted, never
// silently lost. A 4xx other than 408/429 means the sink will never take
// the event: it is counted as rejected and the queue moves on.
package emit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/api"
)

// Options configure an Emitter.
type Options struct {
	Sink          string
	Client        *http.Client
	SpoolDir      string // "" keeps no spool: what the queue cannot hold is lost (and counted)
	SpoolMaxBytes int64
	QueueLen      int
	// Overrides are extension attributes set on every event (K_CE_OVERRIDES).
	Overrides map[string]string
	RetryMin  time.Duration
	RetryMax  time.Duration
	Log       zerolog.Logger
}

// Emitter sends events; Emit never blocks on the network.
type Emitter struct {
	o Options

	mu       sync.Mutex
	queue    []cloudevents.Event
	spooling bool // new events go to the spool until queue and spool drain
	sp       *spool
	wake     chan struct{}

	sent, failures, rejected, overflow atomic.Uint64
	sinkUp                             atomic.Bool
}

// ParseOverrides reads K_CE_OVERRIDES: {"extensions": {"name": "value"}}.
func ParseOverrides(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var v struct {
		Extensions map[string]string `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf(`K_CE_OVERRIDES %q: want {"extensions":{"name":"value"}}: %w`, s, err)
	}
	return v.Extensions, nil
}

// New opens the spool (resuming one left by an earlier run).
func New(o Options) (*Emitter, error) {
	if o.Sink == "" {
		return nil, errors.New("emit: no sink URL")
	}
	if o.Client == nil {
		o.Client = http.DefaultClient
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 1024
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 100 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
	e := &Emitter{o: o, wake: make(chan struct{}, 1)}
	if o.SpoolDir != "" {
		if o.SpoolMaxBytes <= 0 {
			o.SpoolMaxBytes = 64 << 20
		}
		sp, err := openSpool(o.SpoolDir, o.SpoolMaxBytes)
		if err != nil {
			return nil, err
		}
		e.sp = sp
		if !sp.empty() {
			e.spooling = true
			o.Log.Info().Int("events", sp.count).Str("dir", o.SpoolDir).Msg("resuming spooled events from an earlier run")
		}
	}
	e.sinkUp.Store(true)
	return e, nil
}

// Emit queues ev for delivery. It never blocks on the network; when the
// queue is full the event is spooled to disk, and when the spool is full it
// is counted as lost.
func (e *Emitter) Emit(ev cloudevents.Event) {
	for k, v := range e.o.Overrides {
		ev.SetExtension(k, v)
	}
	e.mu.Lock()
	switch {
	case !e.spooling && len(e.queue) < e.o.QueueLen:
		e.queue = append(e.queue, ev)
	case !e.spooling && e.sp != nil:
		// Start spooling with the queue itself, so the spool holds every
		// undelivered event in order. The event the sender has in flight
		// is the spool's head now: done() acknowledges it there.
		for _, q := range e.queue {
			e.spoolLocked(q)
		}
		e.queue = nil
		e.spoolLocked(ev)
	default:
		e.spoolLocked(ev)
	}
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Emitter) spoolLocked(ev cloudevents.Event) {
	if e.sp == nil {
		e.overflow.Add(1)
		return
	}
	b, err := json.Marshal(ev)
	if err == nil {
		err = e.sp.append(b)
	}
	if err != nil {
		e.overflow.Add(1)
		if !errors.Is(err, errSpoolFull) {
			e.o.Log.Error().Err(err).Msg("spool write failed; event lost (counted)")
		}
		return
	}
	e.spooling = true
}

// next returns the oldest undelivered event: the queue holds older events
// than the spool, so it goes first.
func (e *Emitter) next() (cloudevents.Event, bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.queue) > 0 {
		return e.queue[0], true, nil
	}
	if e.sp == nil {
		e.spooling = false
		return cloudevents.Event{}, false, nil
	}
	for {
		b, err := e.sp.peek()
		if err != nil || b == nil {
			if b == nil && err == nil && e.sp.empty() {
				e.spooling = false
			}
			return cloudevents.Event{}, false, err
		}
		var ev cloudevents.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			e.sp.corrupt++
			e.sp.ack()
			continue
		}
		return ev, true, nil
	}
}

// done drops the event next returned.
func (e *Emitter) done() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.queue) > 0 {
		e.queue[0] = cloudevents.Event{}
		e.queue = e.queue[1:]
		if len(e.queue) == 0 {
			e.queue = nil // let the backing array go
		}
		return
	}
	if e.sp != nil {
		e.sp.ack()
		if e.sp.empty() {
			e.spooling = false
		}
	}
}

// Run delivers events until ctx is done, then tries for up to drain to
// deliver what is queued and leaves the rest in the spool.
func (e *Emitter) Run(ctx context.Context, drain time.Duration) {
	backoff := e.o.RetryMin
	for {
		ev, ok, err := e.next()
		if err != nil {
			e.o.Log.Error().Err(err).Msg("reading the spool")
		}
		if !ok {
			select {
			case <-ctx.Done():
				e.shutdown(drain)
				return
			case <-e.wake:
			}
			continue
		}
		switch err := e.send(ctx, ev); {
		case err == nil:
			e.sent.Add(1)
			e.done()
			backoff = e.o.RetryMin
			if !e.sinkUp.Swap(true) {
				e.o.Log.Info().Str("sink", e.o.Sink).Msg("sink is back; draining in order")
			}
		case errors.Is(err, errRejected):
			e.rejected.Add(1)
			e.done()
			e.o.Log.Warn().Err(err).Str("event_id", ev.ID()).Msg("sink rejected event; dropped (counted)")
		default:
			e.failures.Add(1)
			if e.sinkUp.Swap(false) {
				e.o.Log.Warn().Err(err).Str("sink", e.o.Sink).Msg("sink unavailable; queueing, then spooling to disk")
			}
			select {
			case <-ctx.Done():
				e.shutdown(0)
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, e.o.RetryMax)
		}
	}
}

// shutdown moves the queue into the spool so a restart delivers it, after
// a last delivery attempt bounded by drain.
func (e *Emitter) shutdown(drain time.Duration) {
	if drain > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		for {
			e.mu.Lock()
			n := len(e.queue)
			e.mu.Unlock()
			if n == 0 {
				break
			}
			ev, ok, _ := e.next()
			if !ok || e.send(ctx, ev) != nil {
				break
			}
			e.sent.Add(1)
			e.done()
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	// While the queue holds events the spool is empty (see Emit), so
	// spooling them keeps the order for the next run.
	for _, ev := range e.queue {
		e.spoolLocked(ev)
	}
	if n := len(e.queue); n > 0 && e.sp == nil {
		e.o.Log.Warn().Int("events", n).Msg("shutting down with undelivered events and no spool (counted as lost)")
	}
	e.queue = nil
	if e.sp != nil {
		e.sp.close()
	}
}

var errRejected = errors.New("rejected by the sink")

func (e *Emitter) send(ctx context.Context, ev cloudevents.Event) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.o.Sink, nil)
	if err != nil {
		return fmt.Errorf("%w: sink URL %q: %v", errRejected, e.o.Sink, err)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&ev), req); err != nil {
		return fmt.Errorf("%w: encoding: %v", errRejected, err)
	}
	resp, err := e.o.Client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("sink answered %s", resp.Status)
	default:
		return fmt.Errorf("%w: %s", errRejected, resp.Status)
	}
}

// Stats returns the delivery counters, as the health event reports them.
func (e *Emitter) Stats() api.EmitterStats {
	s := api.EmitterStats{
		Sent: e.sent.Load(), Failures: e.failures.Load(), Rejected: e.rejected.Load(),
		SpoolOverflow: e.overflow.Load(), SinkUp: e.sinkUp.Load(),
	}
	e.mu.Lock()
	s.Queued = len(e.queue)
	if e.sp != nil {
		s.Spooled, s.SpoolBytes, s.SpoolCorrupt = e.sp.count, e.sp.bytes, e.sp.corrupt
	}
	e.mu.Unlock()
	return s
}
