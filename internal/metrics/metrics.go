package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry is a registry with the Go runtime's and the process's
// collectors, for a main to register parry's collectors on.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus exposition format. Errors while
// gathering are answered 500 rather than a partial scrape that would read
// as counters going down.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

// latencyBuckets cover an in-process delivery (well under a millisecond)
// to a step acting on a cluster (seconds), up to a Knative Service's
// request timeout.
var latencyBuckets = []float64{.001, .005, .025, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// Event outcomes of the broker's ingress (label outcome of
// parry_broker_events_received_total).
const (
	Accepted  = "accepted"
	Duplicate = "duplicate" // journaled before (same source and id): not delivered again
	Refused   = "refused"
)

// Refusal reasons of the broker's ingress (label reason).
const (
	Unauthenticated = "unauthenticated" // 401
	Forbidden       = "forbidden"       // 403: no EventPolicy allows it
	Unavailable     = "unavailable"     // 503: the token could not be reviewed
	Stale           = "stale"           // 400: time outside the freshness window
	TooLarge        = "too_large"       // 413
	RateLimited     = "rate_limited"    // 429
	Malformed       = "malformed"       // 400: not a valid CloudEvent
	NotJournaled    = "not_journaled"   // 503: the journal could not take it
)

// Delivery outcomes (label outcome of parry_broker_deliveries_total).
const (
	Done         = "done"
	Retried      = "retried"       // an attempt failed; another follows
	Failed       = "failed"        // given up, no dead-letter sink
	DeadLettered = "dead_lettered" // given up, sent to the dead-letter sink
)

// Broker are the broker's collectors.
type Broker struct {
	events          *prometheus.CounterVec
	deliveries      *prometheus.CounterVec
	deliverySeconds *prometheus.HistogramVec
}

// NewBroker registers the broker's collectors on reg.
func NewBroker(reg prometheus.Registerer) *Broker {
	m := &Broker{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parry_broker_events_received_total",
			Help: "Events posted to the broker's ingress, by outcome (accepted, duplicate, refused) and, for refused ones, reason.",
		}, []string{"outcome", "reason"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parry_broker_deliveries_total",
			Help: "Delivery attempts to a Trigger's subscriber or dead-letter sink, by Trigger (namespace/name) and outcome (done, retried, failed, dead_lettered).",
		}, []string{"trigger", "outcome"}),
		deliverySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "parry_broker_delivery_duration_seconds",
			Help:    "Time of one delivery attempt, from sending the event to the subscriber's answer, by Trigger.",
			Buckets: latencyBuckets,
		}, []string{"trigger"}),
	}
	reg.MustRegister(m.events, m.deliveries, m.deliverySeconds)
	// Every outcome is exported from the start at 0, so a rate over the
	// first refusal is not lost to a series that did not exist yet.
	m.events.WithLabelValues(Accepted, "")
	m.events.WithLabelValues(Duplicate, "")
	for _, r := range []string{Unauthenticated, Forbidden, Unavailable, Stale, TooLarge, RateLimited, Malformed, NotJournaled} {
		m.events.WithLabelValues(Refused, r)
	}
	return m
}

// Event counts an ingress event: outcome Accepted or Duplicate with reason
// "", or Refused with a reason.
func (m *Broker) Event(outcome, reason string) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(outcome, reason).Inc()
}

// Delivery counts one delivery attempt to trigger's subscriber or
// dead-letter sink, which took took.
func (m *Broker) Delivery(trigger, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(trigger, outcome).Inc()
	m.deliverySeconds.WithLabelValues(trigger).Observe(took.Seconds())
}

// Step request outcomes (label outcome of parry_step_requests_total).
const (
	// StepDone: the step replied done (or, replying its own events, with
	// its reply or none).
	StepDone = "done"
	// StepFailed: the step gave up and replied failed.
	StepFailed = "failed"
	// StepRefused: the runtime's guardrails refused the event (see
	// parry_step_refusals_total); the reply is failed.
	StepRefused = "refused"
	// StepError: an attempt failed; the broker retries it.
	StepError = "error"
)

// Refusal reasons of the step runtime (label reason of
// parry_step_refusals_total).
const (
	BadSeal   = "bad_seal"   // the incident's seal does not verify
	WrongPod  = "wrong_pod"  // the pod UID is another namespace/name than the event says
	WrongNode = "wrong_node" // the pod runs on another node than the sensor's
	Guardrail = "guardrail"  // guard: circuit breaker, protected namespace, ...
)

// Steps are the step runtime's collectors, shared by every step of a
// process (label step).
type Steps struct {
	requests  *prometheus.CounterVec
	seconds   *prometheus.HistogramVec
	refusals  *prometheus.CounterVec
	incidents *prometheus.CounterVec
}

// NewSteps registers the step runtime's collectors on reg.
func NewSteps(reg prometheus.Registerer) *Steps {
	m := &Steps{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parry_step_requests_total",
			Help: "Events a step handled, by step and outcome (done, failed, refused, error).",
		}, []string{"step", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "parry_step_duration_seconds",
			Help:    "Time a step took for one event, checks and action, by step.",
			Buckets: latencyBuckets,
		}, []string{"step"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parry_step_refusals_total",
			Help: "Events the step runtime refused to act on, by step and reason (bad_seal, wrong_pod, wrong_node, guardrail).",
		}, []string{"step", "reason"}),
		incidents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parry_incidents_opened_total",
			Help: "Incidents classify opened, by playbook and response (act, dryrun, escalate).",
		}, []string{"playbook", "response"}),
	}
	reg.MustRegister(m.requests, m.seconds, m.refusals, m.incidents)
	return m
}

// Request counts one event step handled with outcome, which took took.
func (m *Steps) Request(step, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(step, outcome).Inc()
	m.seconds.WithLabelValues(step).Observe(took.Seconds())
}

// Refusal counts an event step's runtime refused for reason.
func (m *Steps) Refusal(step, reason string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(step, reason).Inc()
}

// IncidentOpened counts an incident of playbook opened with response.
func (m *Steps) IncidentOpened(playbook, response string) {
	if m == nil {
		return
	}
	m.incidents.WithLabelValues(playbook, response).Inc()
}

// RegisterPruned exports a journal pruner's counts (journal.Pruner.Pruned)
// under the names the journal service uses for its own.
func RegisterPruned(reg prometheus.Registerer, pruned func() (events, bytes int64)) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "parry_journal_pruned_events_total",
			Help: "Events deleted by the retention (age or size).",
		}, func() float64 { e, _ := pruned(); return float64(e) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "parry_journal_pruned_bytes_total",
			Help: "The deleted events' own bytes.",
		}, func() float64 { _, b := pruned(); return float64(b) }),
	)
}
