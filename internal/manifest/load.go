package manifest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
	"knative.dev/eventing/pkg/apis/eventing"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
	"knative.dev/pkg/apis"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	eventingV1       = "eventing.knative.dev/v1"
	eventingV1Alpha1 = "eventing.knative.dev/v1alpha1"
)

// Knative Eventing's feature flags: the ConfigMap config/ ships to turn
// OIDC sender authentication on, and the one key of it the embedded broker
// applies (what a broker no EventPolicy names accepts).
const (
	FeaturesNamespace = "knative-eventing"
	FeaturesConfigMap = "config-features"
)

// Broker is a Broker manifest and where it was read.
type Broker struct {
	*eventingv1.Broker
	Pos Position
}

// Key is "namespace/name", the broker's ingress path without slashes.
func (b Broker) Key() string { return b.Namespace + "/" + b.Name }

// Trigger is a Trigger manifest and where it was read.
type Trigger struct {
	*eventingv1.Trigger
	Pos Position
}

// Key is "namespace/name".
func (t Trigger) Key() string { return t.Namespace + "/" + t.Name }

// ClusterOnly is the annotation ("true") of a Trigger whose subscriber
// exists only in a cluster: the journal service's, which records every
// event in PostgreSQL, as the embedded broker records them in its own
// journal. The embedded broker does not deliver to it.
const ClusterOnly = "parry.dev/cluster-only"

// IsClusterOnly reports whether t carries ClusterOnly: "true".
func (t Trigger) IsClusterOnly() bool { return t.Annotations[ClusterOnly] == "true" }

// BrokerKey is the "namespace/name" of the Broker this Trigger subscribes to.
func (t Trigger) BrokerKey() string {
	if t.Spec.BrokerRef != nil {
		ns := t.Spec.BrokerRef.Namespace
		if ns == "" {
			ns = t.Namespace
		}
		return ns + "/" + t.Spec.BrokerRef.Name
	}
	return t.Namespace + "/" + t.Spec.Broker
}

// EventPolicy is an EventPolicy manifest (who may send what to a Broker)
// and where it was read.
type EventPolicy struct {
	*v1alpha1.EventPolicy
	Pos Position
}

// Key is "namespace/name".
func (p EventPolicy) Key() string { return p.Namespace + "/" + p.Name }

// Set is what a config directory declares for the event mesh. Other
// Kubernetes objects in the directory (RBAC, Services, the sensor's
// DaemonSet) are for `ko apply` and are not part of it.
type Set struct {
	Brokers       []Broker
	Triggers      []Trigger
	EventPolicies []EventPolicy
	// Features are Knative's feature flags from the ConfigMap
	// knative-eventing/config-features when the directory ships one, else
	// nil (a cluster's own then apply).
	Features feature.Flags
	// featuresPos is where Features were read.
	featuresPos Position
}

// Broker returns the broker with key "namespace/name".
func (s *Set) Broker(key string) (Broker, bool) {
	for _, b := range s.Brokers {
		if b.Key() == key {
			return b, true
		}
	}
	return Broker{}, false
}

// LoadDir reads every *.yaml and *.yml file directly in dir (not below it,
// as `kubectl apply -f dir` does). All problems are reported together.
func LoadDir(ctx context.Context, dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading config directory: %w (pass --config with the directory that holds the Broker and Trigger manifests)", err)
	}
	set := &Set{}
	var errs Errors
	for _, entry := range entries {
		ext := filepath.Ext(entry.Name())
		if entry.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, entry.Name())
		data, rerr := ReadFile(path)
		if rerr != nil {
			errs = append(errs, rerr)
			continue
		}
		errs = append(errs, set.add(ctx, path, data)...)
	}
	errs = append(errs, set.check()...)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return set, nil
}

// Parse reads the manifests in one YAML stream; file names it in errors.
func Parse(ctx context.Context, file string, data []byte) (*Set, error) {
	set := &Set{}
	errs := set.add(ctx, file, data)
	errs = append(errs, set.check()...)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return set, nil
}

func (s *Set) add(ctx context.Context, file string, data []byte) Errors {
	// Validate as a cluster's webhook with Knative's default config-features
	// would: without flags in the context, features such as delivery
	// timeouts count as disabled.
	ctx = feature.ToContext(ctx, feature.FromContextOrDefaults(ctx))
	if e := CheckSize(file, data); e != nil {
		return Errors{e}
	}
	var errs Errors
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return errs
		}
		if err != nil {
			return append(errs, &Error{Pos: Position{File: file}, Msg: "malformed YAML: " + err.Error()})
		}
		if len(doc.Content) == 0 {
			continue
		}
		if e := CheckDepth(file, &doc); e != nil {
			errs = append(errs, e)
			continue
		}
		if err := s.addDocument(ctx, file, &doc); err != nil {
			errs = append(errs, err...)
		}
	}
}

func (s *Set) addDocument(ctx context.Context, file string, doc *yaml.Node) Errors {
	root := doc.Content[0]
	here := posOf(file, root)
	var meta struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string `yaml:"name"`
			Namespace string `yaml:"namespace"`
		} `yaml:"metadata"`
	}
	if err := root.Decode(&meta); err != nil {
		return Errors{{Pos: here, Msg: "not a Kubernetes object: " + err.Error()}}
	}
	kind := meta.APIVersion + " " + meta.Kind
	switch {
	case meta.APIVersion == eventingV1 && (meta.Kind == "Broker" || meta.Kind == "Trigger"):
	case kind == eventingV1Alpha1+" EventPolicy":
	case kind == "v1 ConfigMap" && meta.Metadata.Namespace == FeaturesNamespace && meta.Metadata.Name == FeaturesConfigMap:
	default:
		return nil
	}
	raw, err := yaml.Marshal(root)
	if err != nil {
		return Errors{{Pos: here, Msg: err.Error()}}
	}
	switch meta.Kind {
	case "ConfigMap":
		return s.addFeatures(file, doc, here, raw)
	case "EventPolicy":
		var p v1alpha1.EventPolicy
		if err := sigsyaml.UnmarshalStrict(raw, &p); err != nil {
			return Errors{{Pos: here, Msg: "EventPolicy: " + err.Error()}}
		}
		defaultNamespace(&p.ObjectMeta.Namespace)
		p.SetDefaults(ctx)
		name := "EventPolicy " + p.Namespace + "/" + p.Name
		if fe := p.Validate(ctx); fe != nil {
			return fieldErrors(file, doc, name, fe)
		}
		if errs := checkMaterializes(file, doc, name, "spec.filters", p.Spec.Filters); len(errs) > 0 {
			out := make(Errors, len(errs))
			for i, e := range errs {
				out[i] = e.Error
			}
			return out
		}
		s.EventPolicies = append(s.EventPolicies, EventPolicy{EventPolicy: &p, Pos: here})
	case "Broker":
		var b eventingv1.Broker
		if err := sigsyaml.UnmarshalStrict(raw, &b); err != nil {
			return Errors{{Pos: here, Msg: "Broker: " + err.Error()}}
		}
		defaultNamespace(&b.ObjectMeta.Namespace)
		// The webhook's config-br-defaults names this class when a Broker
		// has none; without that ConfigMap, SetDefaults would leave it empty.
		if b.Annotations[eventing.BrokerClassKey] == "" {
			metav1SetAnnotation(&b.ObjectMeta.Annotations, eventing.BrokerClassKey, eventing.MTChannelBrokerClassValue)
		}
		b.SetDefaults(ctx)
		if fe := b.Validate(ctx); fe != nil {
			return fieldErrors(file, doc, "Broker "+b.Namespace+"/"+b.Name, fe)
		}
		s.Brokers = append(s.Brokers, Broker{Broker: &b, Pos: here})
	case "Trigger":
		var t eventingv1.Trigger
		if err := sigsyaml.UnmarshalStrict(raw, &t); err != nil {
			return Errors{{Pos: here, Msg: "Trigger: " + err.Error()}}
		}
		defaultNamespace(&t.ObjectMeta.Namespace)
		t.SetDefaults(ctx)
		name := "Trigger " + t.Namespace + "/" + t.Name
		var errs Errors
		var reported []string
		if fe := t.Validate(ctx); fe != nil {
			errs = fieldErrors(file, doc, name, fe)
			for _, e := range fe.WrappedErrors() {
				reported = append(reported, e.Paths...)
			}
		}
		// Knative's validation misses some filters its own code cannot
		// build; report those, but not twice what it already reported.
		for _, e := range checkMaterializes(file, doc, name, "spec.filters", t.Spec.Filters) {
			if !slices.ContainsFunc(reported, func(p string) bool { return p != "" && strings.HasPrefix(p, e.path) }) {
				errs = append(errs, e.Error)
			}
		}
		if len(errs) > 0 {
			return errs
		}
		s.Triggers = append(s.Triggers, Trigger{Trigger: &t, Pos: here})
	}
	return nil
}

// addFeatures reads Knative's feature flags as Knative does
// (feature.NewFlagsConfigFromMap: defaults for absent keys).
func (s *Set) addFeatures(file string, doc *yaml.Node, here Position, raw []byte) Errors {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := sigsyaml.Unmarshal(raw, &cm); err != nil {
		return Errors{{Pos: here, Msg: "ConfigMap " + FeaturesNamespace + "/" + FeaturesConfigMap + ": " + err.Error()}}
	}
	// Knative only logs a value it does not know; for the two flags parry
	// relies on, an unknown value would silently leave senders
	// unauthenticated or every sender allowed.
	for key, known := range map[string][]feature.Flag{
		feature.OIDCAuthentication:       {feature.Enabled, feature.Disabled},
		feature.AuthorizationDefaultMode: {feature.AuthorizationAllowAll, feature.AuthorizationDenyAll, feature.AuthorizationAllowSameNamespace},
	} {
		v, ok := cm.Data[key]
		if ok && !slices.ContainsFunc(known, func(f feature.Flag) bool { return strings.EqualFold(v, string(f)) }) {
			return Errors{{Pos: Locate(file, doc, "data."+key), Msg: fmt.Sprintf("ConfigMap %s/%s data.%s: unknown value %q (want one of %v)", FeaturesNamespace, FeaturesConfigMap, key, v, known)}}
		}
	}
	flags, err := feature.NewFlagsConfigFromMap(cm.Data)
	if err != nil {
		return Errors{{Pos: Locate(file, doc, "data"), Msg: "ConfigMap " + FeaturesNamespace + "/" + FeaturesConfigMap + " data: " + err.Error()}}
	}
	if s.Features != nil {
		return Errors{{Pos: here, Msg: fmt.Sprintf("ConfigMap %s/%s is also defined at %s", FeaturesNamespace, FeaturesConfigMap, s.featuresPos)}}
	}
	s.Features, s.featuresPos = flags, here
	return nil
}

func metav1SetAnnotation(annotations *map[string]string, key, value string) {
	if *annotations == nil {
		*annotations = map[string]string{}
	}
	(*annotations)[key] = value
}

// defaultNamespace applies what kubectl does for a manifest without one.
func defaultNamespace(ns *string) {
	if *ns == "" {
		*ns = "default"
	}
}

func fieldErrors(file string, doc *yaml.Node, object string, fe *apis.FieldError) Errors {
	var errs Errors
	for _, e := range fe.WrappedErrors() {
		paths := e.Paths
		if len(paths) == 0 {
			paths = []string{""}
		}
		msg := e.Message
		if e.Details != "" {
			msg += ": " + e.Details
		}
		for _, p := range paths {
			prefix := object
			if p != "" {
				prefix += " " + p
			}
			errs = append(errs, &Error{Pos: Locate(file, doc, p), Msg: prefix + ": " + msg})
		}
	}
	return errs
}

// filterError is a problem with the filter at path.
type filterError struct {
	*Error
	path string
}

// checkMaterializes builds every filter with Knative's own code and reports
// each one it would skip.
func checkMaterializes(file string, doc *yaml.Node, object, path string, filters []eventingv1.SubscriptionsAPIFilter) []filterError {
	var errs []filterError
	for i, f := range filters {
		errs = append(errs, checkFilter(file, doc, object, fmt.Sprintf("%s[%d]", path, i), f)...)
	}
	return errs
}

func checkFilter(file string, doc *yaml.Node, object, at string, f eventingv1.SubscriptionsAPIFilter) []filterError {
	problem := func(msg string) []filterError {
		return []filterError{{Error: &Error{Pos: Locate(file, doc, at), Msg: object + " " + at + ": " + msg}, path: at}}
	}
	if dialects := Dialects(f); len(dialects) > 1 {
		return problem(fmt.Sprintf("sets %s: a filter has exactly one dialect; combine them with all or any", strings.Join(dialects, " and ")))
	}
	if reason := Unbuildable(f); reason != "" {
		return problem(reason)
	}
	errs := checkMaterializes(file, doc, object, at+".all", f.All)
	errs = append(errs, checkMaterializes(file, doc, object, at+".any", f.Any)...)
	if f.Not != nil {
		errs = append(errs, checkFilter(file, doc, object, at+".not", *f.Not)...)
	}
	return errs
}

// Unbuildable returns why Knative's code cannot build f, or "". The CESQL
// parser panics on some malformed expressions; that is a bad expression too.
// The playbook validator asks the same question of its filters.
func Unbuildable(f eventingv1.SubscriptionsAPIFilter) (reason string) {
	defer func() {
		if r := recover(); r != nil {
			reason = fmt.Sprintf("the CESQL parser rejected the expression %q (%v)", f.CESQL, r)
		}
	}()
	if subscriptionsapi.MaterializeSubscriptionsAPIFilter(zap.NewNop(), f) == nil {
		return unbuildable(f)
	}
	return ""
}

// Dialects lists the dialects f sets, in Knative's documented order; a
// valid filter sets exactly one.
func Dialects(f eventingv1.SubscriptionsAPIFilter) []string {
	var set []string
	for _, d := range []struct {
		name string
		used bool
	}{
		{"exact", len(f.Exact) > 0}, {"prefix", len(f.Prefix) > 0}, {"suffix", len(f.Suffix) > 0},
		{"all", len(f.All) > 0}, {"any", len(f.Any) > 0}, {"not", f.Not != nil}, {"cesql", f.CESQL != ""},
	} {
		if d.used {
			set = append(set, d.name)
		}
	}
	return set
}

func unbuildable(f eventingv1.SubscriptionsAPIFilter) string {
	for dialect, m := range map[string]map[string]string{"exact": f.Exact, "prefix": f.Prefix, "suffix": f.Suffix} {
		for attr, value := range m {
			if attr == "" || value == "" {
				return fmt.Sprintf("%s {%q: %q}: attribute and value must both be non-empty (Knative would skip this filter and match more than intended)", dialect, attr, value)
			}
		}
	}
	if f.CESQL != "" {
		if _, err := subscriptionsapi.NewCESQLFilter(f.CESQL); err != nil {
			return fmt.Sprintf("invalid CESQL expression %q: %v", f.CESQL, err)
		}
		return fmt.Sprintf("invalid CESQL expression %q", f.CESQL)
	}
	return "filter sets no dialect: use one of exact, prefix, suffix, all, any, not, cesql"
}

// check verifies what spans objects: unique names and that every Trigger's
// Broker exists.
func (s *Set) check() Errors {
	var errs Errors
	seen := map[string]Position{}
	for _, b := range s.Brokers {
		if prev, dup := seen["Broker "+b.Key()]; dup {
			errs = append(errs, &Error{Pos: b.Pos, Msg: fmt.Sprintf("Broker %s is also defined at %s", b.Key(), prev)})
		}
		seen["Broker "+b.Key()] = b.Pos
	}
	for _, t := range s.Triggers {
		if prev, dup := seen["Trigger "+t.Key()]; dup {
			errs = append(errs, &Error{Pos: t.Pos, Msg: fmt.Sprintf("Trigger %s is also defined at %s", t.Key(), prev)})
		}
		seen["Trigger "+t.Key()] = t.Pos
		if _, ok := s.Broker(t.BrokerKey()); !ok {
			errs = append(errs, &Error{Pos: t.Pos, Msg: fmt.Sprintf("Trigger %s subscribes to Broker %s, which no manifest defines", t.Key(), t.BrokerKey())})
		}
	}
	for _, p := range s.EventPolicies {
		if prev, dup := seen["EventPolicy "+p.Key()]; dup {
			errs = append(errs, &Error{Pos: p.Pos, Msg: fmt.Sprintf("EventPolicy %s is also defined at %s", p.Key(), prev)})
		}
		seen["EventPolicy "+p.Key()] = p.Pos
	}
	return errs
}
