package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/eventing/pkg/apis/eventing"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
	"knative.dev/pkg/kmeta"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/manifest"
)

// Audience is the OIDC audience of a Broker's ingress, as Knative names it:
// tokens sent to the Broker "namespace/name" must be minted for it.
func Audience(brokerKey string) string { return "eventing.knative.dev/broker/" + brokerKey }

// TriggerServiceAccount is the ServiceAccount whose identity Knative's
// broker filter uses for a Trigger: it delivers with it and sends the
// subscriber's reply back to the Broker with it
// (knative.dev/eventing/pkg/auth.GetOIDCServiceAccountNameForResource).
func TriggerServiceAccount(trigger string) string {
	return strings.ToLower(kmeta.ChildName(trigger, "-oidc-"+eventing.GroupName+"-Trigger"))
}

// TriggerIdentity is the username a Trigger's replies are sent with.
func TriggerIdentity(namespace, trigger string) string {
	return auth.ServiceAccountUser(namespace, TriggerServiceAccount(trigger))
}

// Decide is the EventPolicy decision of the Broker brokerKey of set for an
// event e from sender, exactly as the broker's ingress makes it; an error
// names a policy the embedded broker cannot resolve. reason says why not.
func Decide(ctx context.Context, set *manifest.Set, brokerKey, sender string, e cloudevents.Event) (bool, string, error) {
	br, ok := set.Broker(brokerKey)
	if !ok {
		return false, "", fmt.Errorf("no Broker %s", brokerKey)
	}
	a, problems := newAuthorizer(set, br)
	if len(problems) > 0 {
		return false, "", fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	ok, reason := a.allow(ctx, sender, e)
	return ok, reason, nil
}

// policy is one EventPolicy that applies to a Broker, with its from
// resolved to subjects and its filters built by Knative's code once.
type policy struct {
	name     string
	subjects []string
	filter   eventfilter.Filter // nil: no filters, every event passes
}

// authorizer decides, as Knative's ingress does, whether a sender may send
// an event to one Broker: by the EventPolicies that apply to it, or when
// none does by the default-authorization-mode.
type authorizer struct {
	broker      string
	namespace   string
	policies    []policy // sorted by name, as Knative orders them
	defaultMode feature.Flag
}

// newAuthorizer resolves the EventPolicies of set that apply to br.
func newAuthorizer(set *manifest.Set, br manifest.Broker) (*authorizer, []string) {
	flags := set.Features
	if flags == nil {
		// The cluster's defaults, as Knative ships them.
		flags, _ = feature.NewFlagsConfigFromMap(nil)
	}
	a := &authorizer{broker: br.Key(), namespace: br.Namespace, defaultMode: flags[feature.AuthorizationDefaultMode]}
	var problems []string
	for _, p := range set.EventPolicies {
		if !appliesTo(p, br) {
			continue
		}
		pol := policy{name: p.Key()}
		for i, from := range p.Spec.From {
			switch {
			case from.Sub != nil:
				pol.subjects = append(pol.subjects, *from.Sub)
			case from.Ref != nil:
				gv, _ := schema.ParseGroupVersion(from.Ref.APIVersion)
				if gv.Group != eventing.GroupName || !strings.EqualFold(from.Ref.Kind, "Trigger") {
					problems = append(problems, fmt.Sprintf("%s: EventPolicy %s spec.from[%d].ref: the embedded broker resolves refs to Triggers only, not %s %s: name the sender with sub: system:serviceaccount:<namespace>:<name>",
						p.Pos, p.Key(), i, from.Ref.APIVersion, from.Ref.Kind))
					continue
				}
				if !hasTrigger(set, from.Ref.Namespace, from.Ref.Name) {
					problems = append(problems, fmt.Sprintf("%s: EventPolicy %s spec.from[%d].ref names Trigger %s/%s, which no manifest defines",
						p.Pos, p.Key(), i, from.Ref.Namespace, from.Ref.Name))
					continue
				}
				pol.subjects = append(pol.subjects, TriggerIdentity(from.Ref.Namespace, from.Ref.Name))
			}
		}
		if len(p.Spec.Filters) > 0 {
			pol.filter = subscriptionsapi.CreateSubscriptionsAPIFilters(zap.NewNop(), p.Spec.Filters)
		}
		a.policies = append(a.policies, pol)
	}
	// Knative sorts the applying policies by name (namespace is the
	// Broker's for all of them).
	slices.SortFunc(a.policies, func(x, y policy) int { return strings.Compare(x.name, y.name) })
	return a, problems
}

func hasTrigger(set *manifest.Set, namespace, name string) bool {
	for _, t := range set.Triggers {
		if t.Namespace == namespace && t.Name == name {
			return true
		}
	}
	return false
}

// appliesTo is knative.dev/eventing/pkg/auth.GetEventPoliciesForResource
// for one Broker: a policy of the Broker's namespace with no to, or whose to
// names it by ref or selects its labels.
func appliesTo(p manifest.EventPolicy, br manifest.Broker) bool {
	if p.Namespace != br.Namespace {
		return false
	}
	if len(p.Spec.To) == 0 {
		return true
	}
	for _, to := range p.Spec.To {
		if to.Ref != nil {
			gv, err := schema.ParseGroupVersion(to.Ref.APIVersion)
			if err == nil && strings.EqualFold(to.Ref.Name, br.Name) && strings.EqualFold(gv.Group, eventing.GroupName) && strings.EqualFold(to.Ref.Kind, "Broker") {
				return true
			}
		}
		if to.Selector != nil && to.Selector.TypeMeta != nil && to.Selector.LabelSelector != nil {
			gv, err := schema.ParseGroupVersion(to.Selector.APIVersion)
			if err != nil || !strings.EqualFold(gv.Group, eventing.GroupName) || !strings.EqualFold(to.Selector.Kind, "Broker") {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(to.Selector.LabelSelector)
			if err == nil && sel.Matches(labels.Set(br.Labels)) {
				return true
			}
		}
	}
	return false
}

// allow is knative.dev/eventing/pkg/auth.SubjectAndFiltersPass and the
// default-authorization-mode around it: the first policy (by name) with a
// subject matching sub (exactly, or a pattern ending in *) decides by its
// filters. reason says why not.
func (a *authorizer) allow(ctx context.Context, sub string, e cloudevents.Event) (bool, string) {
	if len(a.policies) == 0 {
		switch a.defaultMode {
		case feature.AuthorizationAllowAll:
			return true, ""
		case feature.AuthorizationDenyAll:
			return false, fmt.Sprintf("%s may not send %s: no EventPolicy applies to Broker %s and default-authorization-mode is %s", sub, e.Type(), a.broker, a.defaultMode)
		default:
			if strings.HasPrefix(sub, auth.ServiceAccountUser(a.namespace, "")) {
				return true, ""
			}
			return false, fmt.Sprintf("%s may not send %s: no EventPolicy applies to Broker %s and default-authorization-mode %s allows only service accounts of %s", sub, e.Type(), a.broker, a.defaultMode, a.namespace)
		}
	}
	for _, p := range a.policies {
		for _, s := range p.subjects {
			if strings.EqualFold(s, sub) || (strings.HasSuffix(s, "*") && strings.HasPrefix(sub, strings.TrimSuffix(s, "*"))) {
				if p.filter == nil || p.filter.Filter(ctx, e) != eventfilter.FailFilter {
					return true, ""
				}
				return false, fmt.Sprintf("%s may not send %s to Broker %s: EventPolicy %s's filters refuse it", sub, e.Type(), a.broker, p.name)
			}
		}
	}
	return false, fmt.Sprintf("%s may not send %s to Broker %s: no EventPolicy that applies to it names this sender", sub, e.Type(), a.broker)
}
