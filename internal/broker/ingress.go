package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/metrics"
)

// ServeHTTP is the ingress of every Broker: POST /<namespace>/<broker>.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.Trim(r.URL.Path, "/")
	rt, ok := b.routes[path]
	if !ok {
		http.Error(w, fmt.Sprintf("no Broker %q: the embedded broker serves %s", path, strings.Join(b.brokerPaths(), ", ")), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "send CloudEvents with POST", http.StatusMethodNotAllowed)
		return
	}
	// Who is sending comes first, as at Knative's ingress: nothing of an
	// unauthenticated request is read.
	from := sender(r)
	if rt.authn != nil {
		id, err := rt.authn.Authenticate(r.Context(), auth.BearerToken(r))
		if err != nil {
			status := http.StatusUnauthorized
			var u *auth.Unavailable
			if errors.As(err, &u) {
				status = http.StatusServiceUnavailable
				b.Stats.Unavailable.Add(1)
				b.opts.Metrics.Event(metrics.Refused, metrics.Unavailable)
				b.log.Warn().Err(err).Str("broker", rt.key).Msg("ingress: a token could not be reviewed, so the event is refused (503); the sender retries")
			} else {
				b.Stats.Unauthenticated.Add(1)
				b.opts.Metrics.Event(metrics.Refused, metrics.Unauthenticated)
			}
			auth.Refuse(w, status, fmt.Sprintf("Broker %s needs a bearer token for audience %s: %v", rt.key, Audience(rt.key), err))
			return
		}
		from = id.Username
	}
	// A body of known length is counted before it is read, so a flood
	// costs the broker no decoding; a chunked one once it is read.
	size := headerBytes(r)
	if r.ContentLength >= 0 {
		if wait := b.limiter.admit(from, size+int(r.ContentLength), time.Now()); wait > 0 {
			b.opts.Metrics.Event(metrics.Refused, metrics.RateLimited)
			tooMany(w, wait)
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, b.opts.MaxEventBytes)
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		b.opts.Metrics.Event(metrics.Refused, metrics.Malformed)
		http.Error(w, "not a CloudEvent: send binary mode (ce-specversion, ce-id, ce-source, ce-type headers) or structured mode (Content-Type: application/cloudevents+json)", http.StatusBadRequest)
		return
	}
	e, err := binding.ToEvent(r.Context(), msg)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			b.opts.Metrics.Event(metrics.Refused, metrics.TooLarge)
			http.Error(w, fmt.Sprintf("event larger than the limit of %d bytes", b.opts.MaxEventBytes), http.StatusRequestEntityTooLarge)
			return
		}
		b.opts.Metrics.Event(metrics.Refused, metrics.Malformed)
		http.Error(w, "malformed CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := events.Validate(*e); err != nil {
		b.opts.Metrics.Event(metrics.Refused, metrics.Malformed)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.ContentLength < 0 {
		if wait := b.limiter.admit(from, size+len(e.Data()), time.Now()); wait > 0 {
			b.opts.Metrics.Event(metrics.Refused, metrics.RateLimited)
			tooMany(w, wait)
			return
		}
	}
	sender := ""
	if rt.authn != nil {
		sender = from
		if ok, reason := rt.authz.allow(b.filterCtx, sender, *e); !ok {
			b.Stats.Forbidden.Add(1)
			b.opts.Metrics.Event(metrics.Refused, metrics.Forbidden)
			auth.Refuse(w, http.StatusForbidden, reason)
			return
		}
	}
	if reason := b.stale(*e, time.Now()); reason != "" {
		// A sender retrying what was journaled already (its 202 lost) is
		// answered as any duplicate, however old the event is by now.
		if dup, err := b.opts.Journal.Has(r.Context(), e.ID(), e.Source(), sender); err != nil || !dup {
			b.Stats.Stale.Add(1)
			b.opts.Metrics.Event(metrics.Refused, metrics.Stale)
			http.Error(w, reason, http.StatusBadRequest)
			return
		}
	}
	dup, err := b.accept(r.Context(), rt, *e, sender, true)
	if err != nil {
		b.opts.Metrics.Event(metrics.Refused, metrics.NotJournaled)
		b.log.Error().Err(err).Str("event_id", e.ID()).Msg("could not journal an event; the sender should retry")
		http.Error(w, "could not journal the event: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if dup {
		b.opts.Metrics.Event(metrics.Duplicate, "")
	} else {
		b.opts.Metrics.Event(metrics.Accepted, "")
	}
	w.WriteHeader(http.StatusAccepted)
}

// stale says why e's time is outside the freshness window, or "". An
// event without a time is refused too: parry's sensor and steps always set
// it, and an undated event could be replayed forever.
func (b *Broker) stale(e cloudevents.Event, now time.Time) string {
	f := b.opts.Freshness
	t := e.Time()
	switch {
	case t.IsZero():
		return "event has no time attribute: the ingress refuses events it cannot date (set time to when the event occurred)"
	case f.MaxAge >= 0 && t.Before(now.Add(-f.MaxAge)):
		return fmt.Sprintf("event time %s is more than %s before the broker's clock (%s): too old to act on (the bound is --ingress-max-age)",
			t.UTC().Format(time.RFC3339Nano), f.MaxAge, now.UTC().Format(time.RFC3339Nano))
	case f.MaxSkew >= 0 && t.After(now.Add(f.MaxSkew)):
		return fmt.Sprintf("event time %s is more than %s after the broker's clock (%s): check the sender's clock (the bound is --ingress-max-skew)",
			t.UTC().Format(time.RFC3339Nano), f.MaxSkew, now.UTC().Format(time.RFC3339Nano))
	}
	return ""
}

// headerBytes is the size of r's headers, where binary mode carries the
// event's attributes.
func headerBytes(r *http.Request) int {
	n := 0
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func (b *Broker) brokerPaths() []string {
	paths := make([]string, 0, len(b.routes))
	for k := range b.routes {
		paths = append(paths, "/"+k)
	}
	return paths
}

// accept journals e with the deliveries it needs, then queues them. An event
// journaled before (same source and id) is not delivered again. external
// events wait while the queue is full: that backpressure reaches the sender
// as a slower 202 instead of unbounded memory. duplicate says e was
// journaled before.
func (b *Broker) accept(ctx context.Context, rt *route, e cloudevents.Event, sender string, external bool) (duplicate bool, err error) {
	if external {
		for b.queue.len() >= b.opts.MaxQueued {
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	}
	matched := b.match(rt, e)
	rec, err := journal.NewRecord(rt.key, sender, e, triggerKeys(matched))
	if err != nil {
		return false, err
	}
	appended, err := b.opts.Journal.Append(ctx, rec)
	if err != nil {
		return false, err
	}
	b.enqueue(appended, e, matched)
	return appended.Duplicate, nil
}

func (b *Broker) enqueue(a journal.Appended, e cloudevents.Event, matched []*trigger) {
	if a.Duplicate {
		b.log.Debug().Str("event_id", e.ID()).Str("event_source", e.Source()).Msg("event journaled before; not delivered again")
		return
	}
	for _, t := range matched {
		b.queue.push(job{key: journal.Key{Seq: a.Seq, Trigger: t.key, Target: journal.ToSubscriber}, trig: t, event: e})
	}
}

func triggerKeys(ts []*trigger) []string {
	keys := make([]string, len(ts))
	for i, t := range ts {
		keys[i] = t.key
	}
	return keys
}
