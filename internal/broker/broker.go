package broker

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	"go.uber.org/zap"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/attributes"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
	"knative.dev/eventing/pkg/kncloudevents"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/logging"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/metrics"
)

// Options configure a Broker. Manifests, Journal and Client are required.
type Options struct {
	Manifests *manifest.Set
	Journal   *journal.Journal
	// Functions maps a Knative Service name to the handler that runs it in
	// this process (a nil reply means none; an error is a failed attempt,
	// retried per the delivery spec).
	Functions map[string]events.Handler
	Client    *http.Client
	Log       zerolog.Logger
	// MaxEventBytes bounds an ingress request body; default 1 MiB.
	MaxEventBytes int64
	// Limits bound the ingress per sender and in total; zero fields take
	// DefaultLimits.
	Limits Limits
	// Workers is how many deliveries run at once; default 64.
	Workers int
	// MaxQueued is how many deliveries may wait before ingress holds new
	// events back; default 65536.
	MaxQueued int
	// Authenticators verify the bearer token of every ingress request, by
	// Broker key "namespace/name": TokenReview for the Broker's Audience in
	// a cluster, a token file without one. Every Broker needs one unless
	// Insecure.
	Authenticators map[string]auth.Authenticator
	// Insecure accepts ingress requests without a token (the sender is then
	// unknown, journaled as ""), for a loopback listener only; the caller
	// checks the address and announces it.
	Insecure bool
	// Freshness bounds the time attribute of ingress events; zero fields
	// take DefaultFreshness.
	Freshness Freshness
	// Metrics count events in and deliveries; nil counts nothing.
	Metrics *metrics.Broker
}

// Freshness is how far an ingress event's time may lie from the broker's
// clock. A negative bound is no bound.
type Freshness struct {
	MaxAge  time.Duration // how far back
	MaxSkew time.Duration // how far ahead (the sender's clock running fast)
}

// DefaultFreshness: five minutes back, 30 seconds ahead.
func DefaultFreshness() Freshness {
	return Freshness{MaxAge: 5 * time.Minute, MaxSkew: 30 * time.Second}
}

// Stats count what the ingress refused, for metrics and tests.
type Stats struct {
	Unauthenticated atomic.Uint64 // 401: no token, or a rejected one
	Forbidden       atomic.Uint64 // 403: no EventPolicy allows the sender this event
	Unavailable     atomic.Uint64 // 503: the token could not be reviewed (failed closed)
	Stale           atomic.Uint64 // 400: time outside the freshness window
	RepliesRefused  atomic.Uint64 // in-process replies no EventPolicy allows
}

// Broker serves every Broker of a manifest set.
type Broker struct {
	opts     Options
	log      zerolog.Logger
	routes   map[string]*route // by broker key "namespace/name"
	limiter  *limiter
	triggers map[string]*trigger
	queue    queue
	wg       sync.WaitGroup
	// filterCtx carries a no-op zap logger: Knative's filters log at debug
	// level through the context, and the fallback logger costs per event.
	filterCtx context.Context
	// Stats count refusals.
	Stats Stats
}

type route struct {
	key   string
	authn auth.Authenticator // nil when Options.Insecure
	authz *authorizer
	// byType holds the Triggers that can only pass events of one type;
	// anyType the rest. Knative's filters cost about a microsecond per
	// Trigger and event, and most Triggers name their type, so an event is
	// only shown to the Triggers that could pass it.
	byType  map[string][]*trigger
	anyType []*trigger
}

func (r *route) add(t *trigger, eventType string) {
	if eventType == "" {
		r.anyType = append(r.anyType, t)
		return
	}
	r.byType[eventType] = append(r.byType[eventType], t)
}

type trigger struct {
	key    string
	broker string
	// identity is who the Trigger's subscriber's replies come from: the
	// Trigger's OIDC identity, as Knative's broker filter sends them.
	identity   string
	filter     eventfilter.Filter
	subscriber destination
	deadLetter *destination
	retry      kncloudevents.RetryConfig
}

// New resolves every Trigger's subscriber and delivery spec. A subscriber
// ref that names no registered function is an error, not a silent drop.
func New(opts Options) (*Broker, error) {
	if opts.Manifests == nil || opts.Journal == nil || opts.Client == nil {
		return nil, fmt.Errorf("broker: Options.Manifests, Journal and Client are required")
	}
	if opts.MaxEventBytes <= 0 {
		opts.MaxEventBytes = 1 << 20
	}
	if opts.Workers <= 0 {
		opts.Workers = 64
	}
	if opts.MaxQueued <= 0 {
		opts.MaxQueued = 1 << 16
	}
	def := DefaultFreshness()
	if opts.Freshness.MaxAge == 0 {
		opts.Freshness.MaxAge = def.MaxAge
	}
	if opts.Freshness.MaxSkew == 0 {
		opts.Freshness.MaxSkew = def.MaxSkew
	}
	b := &Broker{
		opts:      opts,
		log:       opts.Log.With().Str("component", "broker").Logger(),
		routes:    map[string]*route{},
		limiter:   newLimiter(opts.Limits),
		triggers:  map[string]*trigger{},
		filterCtx: logging.WithLogger(context.Background(), zap.NewNop().Sugar()),
	}
	b.queue.init()
	var problems []string
	for _, br := range opts.Manifests.Brokers {
		authz, p := newAuthorizer(opts.Manifests, br)
		problems = append(problems, p...)
		rt := &route{key: br.Key(), byType: map[string][]*trigger{}, authz: authz}
		if !opts.Insecure {
			if rt.authn = opts.Authenticators[br.Key()]; rt.authn == nil {
				problems = append(problems, fmt.Sprintf("%s: Broker %s: no authenticator for its ingress (give it one, or run insecure on loopback)", br.Pos, br.Key()))
			}
		}
		b.routes[br.Key()] = rt
	}
	for _, t := range opts.Manifests.Triggers {
		if t.IsClusterOnly() {
			continue
		}
		br, _ := opts.Manifests.Broker(t.BrokerKey())
		eventType := requiredType(t)
		trig, err := b.resolve(t, br, eventType)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: Trigger %s: %v", t.Pos, t.Key(), err))
			continue
		}
		b.triggers[trig.key] = trig
		b.routes[trig.broker].add(trig, eventType)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("broker: %s", strings.Join(problems, "\n"))
	}
	return b, nil
}

// resolve builds a Trigger's filter with Knative's code, and its subscriber
// and delivery. indexedType is the type the route index already requires of
// every event shown to this Trigger (see requiredType).
func (b *Broker) resolve(t manifest.Trigger, br manifest.Broker, indexedType string) (*trigger, error) {
	trig := &trigger{key: t.Key(), broker: t.BrokerKey(), identity: TriggerIdentity(t.Namespace, t.Name)}
	switch {
	case len(t.Spec.Filters) > 0:
		if filters := withoutTypeFilter(t.Spec.Filters, indexedType); len(filters) > 0 {
			trig.filter = subscriptionsapi.CreateSubscriptionsAPIFilters(zap.NewNop(), filters)
		}
	case t.Spec.Filter != nil:
		trig.filter = attributes.NewAttributesFilter(t.Spec.Filter.Attributes)
	}
	var err error
	if trig.subscriber, err = b.destination(t.Spec.Subscriber); err != nil {
		return nil, fmt.Errorf("subscriber: %w", err)
	}
	delivery := t.Spec.Delivery
	if delivery == nil {
		delivery = br.Spec.Delivery
	}
	if delivery == nil {
		delivery = &eventingduckv1.DeliverySpec{}
	}
	if trig.retry, err = kncloudevents.RetryConfigFromDeliverySpec(*delivery); err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	if delivery.DeadLetterSink != nil {
		dls, err := b.destination(*delivery.DeadLetterSink)
		if err != nil {
			return nil, fmt.Errorf("delivery.deadLetterSink: %w", err)
		}
		trig.deadLetter = &dls
	}
	return trig, nil
}

func (b *Broker) destination(d duckv1.Destination) (destination, error) {
	if d.Ref != nil {
		fn, ok := b.opts.Functions[d.Ref.Name]
		if !ok {
			return destination{}, fmt.Errorf("ref names %s %q, but no function of that name runs in this process (registered: %s); in a cluster it is the Knative Service's address, locally use uri: for an HTTP endpoint",
				d.Ref.Kind, d.Ref.Name, registered(b.opts.Functions))
		}
		return destination{name: "function:" + d.Ref.Name, fn: fn}, nil
	}
	if d.URI == nil || !d.URI.URL().IsAbs() {
		return destination{}, fmt.Errorf("needs a ref to a function or an absolute uri")
	}
	return destination{name: d.URI.String(), url: d.URI.String(), client: b.opts.Client, maxBody: b.opts.MaxEventBytes}, nil
}

func registered(fns map[string]events.Handler) string {
	if len(fns) == 0 {
		return "none"
	}
	names := make([]string, 0, len(fns))
	for n := range fns {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// match returns the keys of r's Triggers whose filter passes e, with
// Knative's semantics: only FailFilter rejects.
func (b *Broker) match(r *route, e cloudevents.Event) []*trigger {
	var out []*trigger
	for _, candidates := range [][]*trigger{r.byType[e.Type()], r.anyType} {
		for _, t := range candidates {
			if t.filter == nil || t.filter.Filter(b.filterCtx, e) != eventfilter.FailFilter {
				out = append(out, t)
			}
		}
	}
	return out
}

// requiredType returns the event type a Trigger's filter demands, or "" when
// it can pass events of several types. It only reads filters whose meaning
// is certain: spec.filters are ANDed, so an exact type among them (or inside
// a top-level all) is required; spec.filter.attributes counts when
// spec.filters is empty, as in Knative, and "" there means any value.
func requiredType(t manifest.Trigger) string {
	if len(t.Spec.Filters) > 0 {
		return exactTypeIn(t.Spec.Filters)
	}
	if t.Spec.Filter != nil {
		return t.Spec.Filter.Attributes["type"]
	}
	return ""
}

// withoutTypeFilter drops the top-level {exact: {type: T}} entries of an
// ANDed filter list whose type the index already guarantees. What it leaves
// is still built and run by Knative; it drops a test that always passes, and
// with it, for a playbook's usual Trigger (a type and one condition), the
// all filter Knative wraps around two or more entries, which on every
// rejected event signals a goroutine that reorders them. In the broker
// benchmark that is 31 of 257 allocations per event.
func withoutTypeFilter(filters []eventingv1.SubscriptionsAPIFilter, indexedType string) []eventingv1.SubscriptionsAPIFilter {
	if indexedType == "" {
		return filters
	}
	return slices.DeleteFunc(slices.Clone(filters), func(f eventingv1.SubscriptionsAPIFilter) bool {
		return len(f.Exact) == 1 && f.Exact["type"] == indexedType && len(manifest.Dialects(f)) == 1
	})
}

func exactTypeIn(filters []eventingv1.SubscriptionsAPIFilter) string {
	for _, f := range filters {
		if typ := f.Exact["type"]; typ != "" {
			return typ
		}
		if typ := exactTypeIn(f.All); typ != "" {
			return typ
		}
	}
	return ""
}

// Start redelivers what the journal holds pending and starts the delivery
// workers. They stop when ctx is done; Wait waits for them.
func (b *Broker) Start(ctx context.Context) error {
	pending, err := b.opts.Journal.Pending(ctx)
	if err != nil {
		return fmt.Errorf("broker: reading pending deliveries: %w", err)
	}
	for _, p := range pending {
		trig, ok := b.triggers[p.Trigger]
		if !ok {
			reason := "Trigger " + p.Trigger + " is no longer configured; the event stays in the journal"
			b.log.Warn().Str("trigger", p.Trigger).Str("event_id", p.Event.ID()).Msg(reason)
			if err := b.opts.Journal.GiveUp(ctx, p.Key, p.Attempts, 0, reason, false); err != nil {
				return err
			}
			continue
		}
		b.queue.push(job{key: p.Key, trig: trig, event: p.Event, attempts: p.Attempts, code: p.Code, reason: p.Error})
	}
	if len(pending) > 0 {
		b.log.Info().Int("deliveries", len(pending)).Msg("redelivering what was pending when parry last stopped")
	}
	for range b.opts.Workers {
		b.wg.Add(1)
		go b.work(ctx)
	}
	go func() {
		<-ctx.Done()
		b.queue.close()
	}()
	return nil
}

// Wait blocks until the workers have stopped.
func (b *Broker) Wait() { b.wg.Wait() }
