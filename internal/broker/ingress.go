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

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
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
	// A body of known length is counted before it is read, so a flood
	// costs the broker no decoding; a chunked one once it is read.
	from, size := sender(r), headerBytes(r)
	if r.ContentLength >= 0 {
		if wait := b.limiter.admit(from, size+int(r.ContentLength), time.Now()); wait > 0 {
			tooMany(w, wait)
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, b.opts.MaxEventBytes)
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		http.Error(w, "not a CloudEvent: send binary mode (ce-specversion, ce-id, ce-source, ce-type headers) or structured mode (Content-Type: application/cloudevents+json)", http.StatusBadRequest)
		return
	}
	e, err := binding.ToEvent(r.Context(), msg)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("event larger than the limit of %d bytes", b.opts.MaxEventBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "malformed CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := events.Validate(*e); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.ContentLength < 0 {
		if wait := b.limiter.admit(from, size+len(e.Data()), time.Now()); wait > 0 {
			tooMany(w, wait)
			return
		}
	}
	if err := b.accept(r.Context(), rt, *e, true); err != nil {
		b.log.Error().Err(err).Str("event_id", e.ID()).Msg("could not journal an event; the sender should retry")
		http.Error(w, "could not journal the event: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusAccepted)
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
// as a slower 202 instead of unbounded memory.
func (b *Broker) accept(ctx context.Context, rt *route, e cloudevents.Event, external bool) error {
	if external {
		for b.queue.len() >= b.opts.MaxQueued {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	}
	matched := b.match(rt, e)
	rec, err := journal.NewRecord(rt.key, "", e, triggerKeys(matched))
	if err != nil {
		return err
	}
	appended, err := b.opts.Journal.Append(ctx, rec)
	if err != nil {
		return err
	}
	b.enqueue(appended, e, matched)
	return nil
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
