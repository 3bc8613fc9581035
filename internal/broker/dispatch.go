package broker

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"knative.dev/eventing/pkg/kncloudevents/attributes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/metrics"
)

// job is one delivery of one event to one Trigger's subscriber or dead-letter
// sink. attempts counts the attempts made so far; code and reason are the
// subscriber's last answer, which a dead-letter delivery reports.
type job struct {
	key      journal.Key
	trig     *trigger
	event    cloudevents.Event
	attempts int
	code     int
	reason   string
}

// queue is an unbounded FIFO: replies and retries must never block the
// workers that produce them (a bounded channel would deadlock when full).
// Ingress bounds it from outside (Options.MaxQueued).
type queue struct {
	mu     sync.Mutex
	items  []job
	head   int
	ready  chan struct{}
	closed bool
}

func (q *queue) init() { q.ready = make(chan struct{}, 1) }

func (q *queue) push(j job) {
	q.mu.Lock()
	if q.closed {
		// Shutting down: the delivery is pending in the journal and will be
		// redelivered at the next start.
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, j)
	q.signal()
	q.mu.Unlock()
}

// signal wakes one waiting worker. It is called with mu held, so it never
// races with close.
func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}

func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	close(q.ready)
}

// pop blocks until a job is queued; ok is false once the queue is closed.
// Work still queued then stays pending in the journal for the next start.
func (q *queue) pop() (job, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return job{}, false
		}
		if q.head < len(q.items) {
			j := q.items[q.head]
			q.items[q.head] = job{}
			q.head++
			if q.head == len(q.items) {
				q.items, q.head = q.items[:0], 0
			}
			if q.head < len(q.items) {
				// Pass the wake-up on, so idle workers drain a burst together.
				q.signal()
			}
			q.mu.Unlock()
			return j, true
		}
		q.mu.Unlock()
		if _, ok := <-q.ready; !ok {
			return job{}, false
		}
	}
}

func (b *Broker) work(ctx context.Context) {
	defer b.wg.Done()
	for {
		j, ok := b.queue.pop()
		if !ok {
			return
		}
		b.deliver(ctx, j)
	}
}

func (b *Broker) deliver(ctx context.Context, j job) {
	dest, ev := j.trig.subscriber, j.event
	if j.key.Target == journal.ToDeadLetter {
		dest, ev = *j.trig.deadLetter, withKnativeError(j.event, j.trig.subscriber.name, j.code, j.reason)
	}
	attemptCtx, cancel := ctx, context.CancelFunc(func() {})
	if j.trig.retry.RequestTimeout > 0 {
		attemptCtx, cancel = context.WithTimeout(ctx, j.trig.retry.RequestTimeout)
	}
	sent := time.Now()
	out := dest.send(attemptCtx, ev)
	took := time.Since(sent)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: the delivery stays pending in the journal
	}
	j.attempts++
	if out.ok() {
		reply, code, err := b.prepareReply(j, out.reply)
		if err == nil {
			b.opts.Metrics.Delivery(j.trig.key, metrics.Done, took)
			b.complete(ctx, j, reply)
			return
		}
		out = outcome{code: code, err: err, resp: &http.Response{StatusCode: code}}
	}
	// Only a failure gets a logger with the delivery's fields: building it
	// for every delivery would allocate on the hot path.
	log := b.log.With().Str("trigger", j.trig.key).Str("event_id", j.event.ID()).Str("event_type", j.event.Type()).
		Str("target", string(j.key.Target)).Int("attempt", j.attempts).Int("status", out.code).Logger()

	if retry, _ := j.trig.retry.CheckRetry(ctx, out.resp, out.err); retry && j.attempts <= j.trig.retry.RetryMax {
		delay := j.trig.retry.Backoff(j.attempts, out.resp)
		b.opts.Metrics.Delivery(j.trig.key, metrics.Retried, took)
		log.Debug().Err(out.err).Dur("retry_in", delay).Msg("delivery failed; will retry")
		if err := b.opts.Journal.Attempted(ctx, j.key, j.attempts, out.code, truncate(out.reason())); err != nil {
			log.Error().Err(err).Msg("could not journal a failed attempt")
		}
		if j.key.Target == journal.ToSubscriber {
			j.code, j.reason = out.code, out.reason()
		}
		time.AfterFunc(delay, func() { b.queue.push(j) })
		return
	}

	deadLetter := j.key.Target == journal.ToSubscriber && j.trig.deadLetter != nil
	if deadLetter {
		b.opts.Metrics.Delivery(j.trig.key, metrics.DeadLettered, took)
	} else {
		b.opts.Metrics.Delivery(j.trig.key, metrics.Failed, took)
	}
	if err := b.opts.Journal.GiveUp(ctx, j.key, j.attempts, out.code, truncate(out.reason()), deadLetter); err != nil {
		log.Error().Err(err).Msg("could not journal a failed delivery")
		return
	}
	if deadLetter {
		log.Warn().Str("reason", truncate(out.reason())).Msg("delivery failed; sending to the dead-letter sink")
		b.queue.push(job{key: journal.Key{Seq: j.key.Seq, Trigger: j.key.Trigger, Target: journal.ToDeadLetter},
			trig: j.trig, event: j.event, code: out.code, reason: out.reason()})
		return
	}
	log.Error().Str("reason", truncate(out.reason())).Msg("delivery failed for good; the event stays in the journal (`parry trace --event ID`)")
}

// prepareReply links a subscriber's reply to the event it answers. A reply
// built with package events already is; one from a foreign subscriber gets
// the causation and trace here. The reply re-enters the Broker from the
// Trigger's identity, as Knative's broker filter sends it, so the same
// EventPolicies decide: a reply they refuse fails the delivery with 403,
// which is not retried (the dead-letter sink then reports it).
func (b *Broker) prepareReply(j job, reply *cloudevents.Event) (*cloudevents.Event, int, error) {
	if reply == nil || j.key.Target == journal.ToDeadLetter {
		return nil, 0, nil
	}
	if events.String(*reply, events.ExtCausation) == "" || events.TraceID(*reply) == "" {
		events.SetCause(reply, j.event)
	}
	if err := events.Validate(*reply); err != nil {
		return nil, http.StatusBadGateway, fmt.Errorf("%s replied with an invalid event: %w", j.trig.subscriber.name, err)
	}
	if ok, reason := b.routes[j.trig.broker].authz.allow(b.filterCtx, j.trig.identity, *reply); !ok {
		b.Stats.RepliesRefused.Add(1)
		return nil, http.StatusForbidden, fmt.Errorf("the reply of %s is refused: %s", j.trig.subscriber.name, reason)
	}
	return reply, 0, nil
}

func (b *Broker) complete(ctx context.Context, j job, reply *cloudevents.Event) {
	var rec *journal.Record
	var matched []*trigger
	if reply != nil {
		matched = b.match(b.routes[j.trig.broker], *reply)
		r, err := journal.NewRecord(j.trig.broker, j.trig.identity, *reply, triggerKeys(matched))
		if err != nil {
			b.log.Error().Err(err).Str("trigger", j.trig.key).Msg("could not encode a reply")
			return
		}
		rec = &r
	}
	appended, err := b.opts.Journal.Complete(ctx, j.key, j.attempts, rec)
	if err != nil {
		// Not journaled as done: it is redelivered after a restart, and the
		// reply's deterministic id makes that harmless.
		b.log.Error().Err(err).Str("trigger", j.trig.key).Str("event_id", j.event.ID()).Msg("could not journal a completed delivery")
		return
	}
	if reply != nil {
		b.enqueue(appended, *reply, matched)
	}
}

// withKnativeError adds the attributes Knative puts on a dead-lettered event.
func withKnativeError(e cloudevents.Event, dest string, code int, reason string) cloudevents.Event {
	out := e.Clone()
	data := base64.StdEncoding.EncodeToString([]byte(reason))
	if len(data) > attributes.KnativeErrorDataExtensionMaxLength {
		data = data[:attributes.KnativeErrorDataExtensionMaxLength]
	}
	out.SetExtension(attributes.KnativeErrorDestExtensionKey, dest)
	out.SetExtension(attributes.KnativeErrorCodeExtensionKey, code)
	out.SetExtension(attributes.KnativeErrorDataExtensionKey, data)
	return out
}

func truncate(s string) string {
	const max = 1024
	s = strings.TrimSpace(s)
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
