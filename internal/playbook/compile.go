package playbook

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor/filters"
)

// Where compiled output goes and what it is called. The Broker is the one
// config/200-broker.yaml ships. The sensor runs in SensorNamespace, the one
// namespace whose Pod Security level is privileged, so its filters
// ConfigMap is there too.
const (
	Namespace       = "parry-system"
	SensorNamespace = "parry-sensor"
	BrokerName      = "parry"

	SensorFiltersFile      = "300-sensor-filters.yaml"
	SensorFiltersConfigMap = "parry-sensor-filters"
	SensorFiltersKey       = "filters.yaml"
	BundleFile             = "310-playbooks.yaml"
	BundleConfigMap        = "parry-playbooks"
	BundleKey              = "playbooks.yaml"
	// TriggerFilePrefix starts every per-playbook Trigger file; compile
	// owns the files with this prefix and removes stale ones.
	TriggerFilePrefix = "400-playbook-"
	BaselineFile      = "390-classify-baseline.yaml"
	// PoliciesFile holds the EventPolicies: who may send which events to
	// the Broker (Knative's OIDC sender authorization; the embedded broker
	// enforces the same file).
	PoliciesFile = "450-event-policies.yaml"
	// SensorServiceAccount is the sensor DaemonSet's (config/600-sensor.yaml),
	// in SensorNamespace.
	SensorServiceAccount = "parry-sensor"
	// IncidentCloserServiceAccount (config/610-incident-closer.yaml, in
	// Namespace) is who `parry incident close` acts as in a cluster: it
	// may lift blocks, and the EventPolicy sender-incident-closer lets it
	// send events.TypeIncidentClosed and nothing else.
	IncidentCloserServiceAccount = "parry-incident-closer"
	// FalcoAdapterServiceAccount and TetragonIngestServiceAccount are the
	// identities other tools' events reach the Broker with (parry ingest
	// falco, in Namespace; parry ingest tetragon, in
	// TetragonIngestNamespace).
	FalcoAdapterServiceAccount   = "parry-ingest-falco"
	TetragonIngestServiceAccount = "parry-ingest-tetragon"
	// TetragonIngestNamespace is the sensor's: the ingester reads
	// Tetragon's export file from the node (a hostPath), which only the
	// privileged level of parry-sensor admits, not parry-system's
	// restricted one.
	TetragonIngestNamespace = SensorNamespace
	// LocalOperator is the operator's identity under parry run (its token
	// is in the local token file; stack.Operator). No cluster
	// authenticator issues it: Knative's OIDC senders are ServiceAccounts.
	LocalOperator = "parry:operator"
)

// BaselineTypes are the sensor events classify learns workload baselines
// from (and the health events it tracks loss with); one Trigger sends them
// all to classify.
var BaselineTypes = []string{events.TypeProcessExec, events.TypeNetworkConnect, events.TypeSensorHealth}

// Output is what compile writes: file name (relative to the output
// directory) to content.
type Output map[string][]byte

// Compile validates and compiles srcs. On any error it returns no output,
// so a bad playbook never leaves half-written config behind. Every Trigger
// is checked with Knative's own validation (manifest.Parse).
func Compile(ctx context.Context, srcs []*Source, reg Registry) (Output, error) {
	if errs := Validate(srcs, reg); len(errs) > 0 {
		return nil, errs
	}
	srcs = slices.Clone(srcs)
	slices.SortFunc(srcs, func(a, b *Source) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	out := Output{}
	var errs manifest.Errors
	bundle := Bundle{APIVersion: APIVersion, Kind: "PlaybookBundle"}
	sf := baseSensorFilters()
	for _, s := range srcs {
		c, err := compileOne(s, reg)
		if err != nil {
			errs = append(errs, s.errorf("", "%v", err))
			continue
		}
		bundle.Playbooks = append(bundle.Playbooks, c)
		sf = filters.Merge(sf, sensorFilters(s.Sensor))
		y, err := triggersYAML(s, c, reg)
		if err != nil {
			errs = append(errs, s.errorf("", "%v", err))
			continue
		}
		// Knative's validation of exactly what we write; an error here is
		// reported at the playbook's match, where it came from.
		file := TriggerFilePrefix + s.Metadata.Name + ".yaml"
		if _, err := manifest.Parse(ctx, file, append(brokerYAML(), y...)); err != nil {
			errs = append(errs, s.errorf("match", "the compiled Triggers fail Knative's validation: %v", err))
			continue
		}
		out[file] = y
	}
	if len(errs) > 0 {
		return nil, errs
	}
	out[BaselineFile] = baselineTriggerYAML(bundle.Playbooks, reg[RootFunction].Delivery)
	pol := policiesYAML(bundle.Playbooks)
	if _, err := manifest.Parse(ctx, PoliciesFile, pol); err != nil {
		return nil, fmt.Errorf("the compiled EventPolicies fail Knative's validation: %w", err)
	}
	out[PoliciesFile] = pol
	sfYAML, err := filters.Marshal(sf)
	if err != nil {
		return nil, err
	}
	if _, err := filters.Parse(sfYAML, "compiled sensor filters"); err != nil {
		return nil, fmt.Errorf("the merged sensor filters are invalid: %w", err)
	}
	out[SensorFiltersFile] = configMapYAML(SensorNamespace, SensorFiltersConfigMap, SensorFiltersKey,
		"What the sensor passes from the kernel: the union of what the playbooks need.\n# The sensor DaemonSet mounts it and passes --filters; parry run reads it from config/.", sfYAML)
	by, err := yaml.Marshal(bundle)
	if err != nil {
		return nil, err
	}
	out[BundleFile] = configMapYAML(Namespace, BundleConfigMap, BundleKey,
		"The compiled playbooks: match, guardrails and every step's validated parameters.\n# Functions mount it and look a playbook up by the event's playbook extension;\n# parry run reads it from config/.", by)
	return out, nil
}

// baseSensorFilters is what the sensor watches whatever the playbooks say:
// pods only, below the kubelet's roots, with exits for the flight recorder.
func baseSensorFilters() filters.Config {
	d := filters.Default()
	return filters.Config{
		APIVersion: filters.APIVersion, Kind: filters.Kind, Scope: "pods", PodRoots: d.PodRoots,
		Exec: filters.Exec{Exits: true}, Signals: []string{},
	}
}

func compileOne(s *Source, reg Registry) (Compiled, error) {
	c := Compiled{
		Name: s.Metadata.Name, Description: strings.TrimSpace(s.Description), Severity: s.Severity,
		Match: s.Match,
		Guardrails: guard.Rules{
			ProtectedNamespaces:  protected(s.Guardrails.ProtectedNamespaces),
			RateIncidents:        DefaultRateIncidents,
			RatePer:              DefaultRatePer.String(),
			DryRun:               s.Guardrails.DryRun,
			RequireHealthySensor: s.Guardrails.RequireHealthySensor,
		},
	}
	if r := s.Guardrails.RateLimit; r != nil {
		d, _ := time.ParseDuration(r.Per)
		c.Guardrails.RateIncidents, c.Guardrails.RatePer = r.Incidents, d.String()
	}
	for _, st := range s.Steps {
		params, err := reg[st.Function].Validate(st.Params)
		if err != nil {
			return c, err
		}
		when, after := st.When, ""
		if st.After != "" {
			if when == "" {
				when = WhenSucceeded
			}
			for _, prev := range s.Steps {
				if prev.ID() == st.After {
					after = prev.Function
				}
			}
		}
		c.Steps = append(c.Steps, CompiledStep{Name: st.ID(), Function: st.Function, After: after, When: when, Params: params})
	}
	return c, nil
}

func protected(extra []string) []string {
	out := slices.Concat(guard.AlwaysProtected(), extra)
	slices.Sort(out)
	return slices.Compact(out)
}

// The Trigger manifests are written from these small types rather than
// Knative's, whose JSON shape carries status and empty metadata fields.
type triggerDoc struct {
	APIVersion string      `yaml:"apiVersion"`
	Kind       string      `yaml:"kind"`
	Metadata   triggerMeta `yaml:"metadata"`
	Spec       triggerSpec `yaml:"spec"`
}

type triggerMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

type triggerSpec struct {
	Broker     string     `yaml:"broker"`
	Filters    []Filter   `yaml:"filters"`
	Subscriber subscriber `yaml:"subscriber"`
	Delivery   *delivery  `yaml:"delivery,omitempty"`
}

// delivery is a Trigger's retry policy, the step's own (step.Spec.Delivery),
// and for a response step its dead-letter sink: when the broker gives up on
// the step (its retries spent), DeadLetterFunction publishes the step's
// failed event, so the trace says why and playbooks can branch.
type delivery struct {
	Retry          int         `yaml:"retry,omitempty"`
	BackoffPolicy  string      `yaml:"backoffPolicy,omitempty"`
	BackoffDelay   string      `yaml:"backoffDelay,omitempty"`
	Timeout        string      `yaml:"timeout,omitempty"`
	DeadLetterSink *subscriber `yaml:"deadLetterSink,omitempty"`
}

// deliveryOf renders a step's policy with Knative's ISO 8601 durations;
// nil for a step that declares none and has no dead-letter sink.
func deliveryOf(d step.Delivery, deadLetter bool) *delivery {
	out := &delivery{}
	if d != (step.Delivery{}) {
		out = &delivery{Retry: d.Retry, BackoffPolicy: "exponential", BackoffDelay: isoDuration(d.Backoff), Timeout: isoDuration(d.Timeout)}
	}
	if deadLetter {
		dls := serviceRef(DeadLetterFunction)
		out.DeadLetterSink = &dls
	}
	if *out == (delivery{}) {
		return nil
	}
	return out
}

func isoDuration(d time.Duration) string {
	return "PT" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "S"
}

// DeadLetterFunction turns dead-lettered step deliveries into
// dev.parry.step.<step>.failed.v1 (functions/failed).
const DeadLetterFunction = "parry-failed"

type subscriber struct {
	Ref ref `yaml:"ref"`
	// Audience is the step Service's OIDC audience: a Knative Service
	// advertises none, so without it Knative's broker filter would send the
	// step no token to verify (step.Serve).
	Audience string `yaml:"audience"`
}

type ref struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Name       string `yaml:"name"`
}

func serviceRef(fn string) subscriber {
	return subscriber{Ref: ref{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: fn}, Audience: step.ServiceAudience(Namespace, fn)}
}

// StepFilters are the Trigger filters of a step: the playbook's match for
// the root, else the reply type of the step it runs after, the playbook
// extension, and (after classify) not an escalated incident.
func StepFilters(c Compiled, st CompiledStep) []Filter {
	if st.After == "" {
		// Only sensor events: a match on inherited extensions alone (podns,
		// say) would otherwise feed classify its own replies, in a loop.
		return append([]Filter{{Prefix: map[string]string{"type": events.TypeSensorPrefix}}}, c.Match...)
	}
	if st.After == RootFunction {
		return []Filter{
			{Exact: map[string]string{"type": events.TypeIncidentOpened, events.ExtPlaybook: c.Name}},
			{Not: &Filter{Exact: map[string]string{events.ExtResponse: events.ResponseEscalate}}},
		}
	}
	switch st.When {
	case WhenFailed:
		return []Filter{{Exact: map[string]string{"type": events.StepFailed(st.After), events.ExtPlaybook: c.Name}}}
	case WhenAlways:
		return []Filter{
			{Exact: map[string]string{events.ExtPlaybook: c.Name}},
			{Any: []Filter{
				{Exact: map[string]string{"type": events.StepDone(st.After)}},
				{Exact: map[string]string{"type": events.StepFailed(st.After)}},
			}},
		}
	default:
		return []Filter{{Exact: map[string]string{"type": events.StepDone(st.After), events.ExtPlaybook: c.Name}}}
	}
}

func triggersYAML(s *Source, c Compiled, reg Registry) ([]byte, error) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Generated by `parry playbook compile` from %s. DO NOT EDIT.\n", baseName(s.File))
	for i, st := range c.Steps {
		if i > 0 {
			buf.WriteString("---\n")
		}
		if name := c.Name + "-" + st.Function; len(name) > MaxTriggerName {
			return nil, fmt.Errorf("Trigger %s: name longer than %d characters: Knative would hash its OIDC ServiceAccount's name and the step could not recognise the Trigger as its sender; shorten the playbook's name", name, MaxTriggerName)
		}
		d := triggerDoc{
			APIVersion: "eventing.knative.dev/v1", Kind: "Trigger",
			Metadata: triggerMeta{
				Name: c.Name + "-" + st.Function, Namespace: Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "parry", "parry.dev/playbook": c.Name, "parry.dev/step": st.Function},
			},
			Spec: triggerSpec{Broker: BrokerName, Filters: StepFilters(c, st), Subscriber: serviceRef(st.Function),
				Delivery: deliveryOf(reg[st.Function].Delivery, st.After != "")},
		}
		if st.After != "" {
			d.Metadata.Annotations = map[string]string{"parry.dev/after": st.After, "parry.dev/when": st.When}
		}
		if err := encode(&buf, d); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func baselineTriggerYAML(pbs []Compiled, policy step.Delivery) []byte {
	var buf bytes.Buffer
	buf.WriteString("# Generated by `parry playbook compile`. DO NOT EDIT.\n" +
		"# classify learns each workload's baseline (executables, destinations, ports)\n" +
		"# from every exec and connect, and tracks sensor loss from health events.\n" +
		"# Events a playbook matches reach classify through that playbook's Trigger.\n")
	var anyOf []Filter
	for _, t := range BaselineTypes {
		anyOf = append(anyOf, Filter{Exact: map[string]string{"type": t}})
	}
	d := triggerDoc{
		APIVersion: "eventing.knative.dev/v1", Kind: "Trigger",
		Metadata: triggerMeta{Name: "classify-baseline", Namespace: Namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "parry", "parry.dev/step": RootFunction}},
		Spec: triggerSpec{Broker: BrokerName, Filters: []Filter{{Any: anyOf}}, Subscriber: serviceRef(RootFunction),
			Delivery: deliveryOf(policy, false)},
	}
	var matched []Filter
	for _, p := range pbs {
		matched = append(matched, Filter{All: p.Match})
	}
	if len(matched) > 0 {
		d.Spec.Filters = append(d.Spec.Filters, Filter{Not: &Filter{Any: matched}})
	}
	if err := encode(&buf, d); err != nil {
		panic(err) // static shape; cannot fail
	}
	return buf.Bytes()
}

// MaxTriggerName is the longest Trigger name whose OIDC ServiceAccount
// Knative names <trigger>-oidc-eventing.knative.dev-trigger (63 characters
// in all); a longer one is hashed.
const MaxTriggerName = 63 - len("-oidc-eventing.knative.dev-trigger")

// The families of types the EventPolicies allow (events.StepDone,
// events.StepFailed and the incident types build them; a test checks that
// every type parry sends is allowed).
const (
	typeStepPrefix   = "dev.parry.step."
	typeFailedSuffix = ".failed.v1"
)

// classifyIncidentTypes are the incident types classify sends.
var classifyIncidentTypes = []string{events.TypeIncidentOpened, events.TypeIncidentJoined, events.TypeIncidentSuppressed}

// policyDoc is an EventPolicy as compile writes it.
type policyDoc struct {
	APIVersion string      `yaml:"apiVersion"`
	Kind       string      `yaml:"kind"`
	Metadata   triggerMeta `yaml:"metadata"`
	Spec       policySpec  `yaml:"spec"`
}

type policySpec struct {
	To      []policyTo   `yaml:"to"`
	From    []policyFrom `yaml:"from"`
	Filters []Filter     `yaml:"filters"`
}

type policyTo struct {
	Ref ref `yaml:"ref"`
}

type policyFrom struct {
	Ref *policyRef `yaml:"ref,omitempty"`
	Sub string     `yaml:"sub,omitempty"`
}

type policyRef struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Name       string `yaml:"name"`
	Namespace  string `yaml:"namespace"`
}

// policiesYAML writes who may send what to the Broker: the sensor only
// sensor events (but Falco's); the Falco adapter only Falco alerts, the
// Tetragon ingester only execs; whoever closes an incident (the closer's ServiceAccount,
// or parry run's operator) only incident.closed; each step, through the Triggers that deliver to it (a
// step's reply reaches the Broker with the identity of the Trigger that
// delivered the cause, as Knative's broker filter sends it), only its own
// types; the dead-letter sink, which publishes with its own
// ServiceAccount, only failed events. With one policy per sender, Knative's
// first-match-by-name never picks another's filters.
func policiesYAML(pbs []Compiled) []byte {
	triggers := map[string][]string{RootFunction: {"classify-baseline"}}
	for _, c := range pbs {
		for _, st := range c.Steps {
			triggers[st.Function] = append(triggers[st.Function], c.Name+"-"+st.Function)
		}
	}
	stepsWithTriggers := make([]string, 0, len(triggers))
	for fn := range triggers {
		stepsWithTriggers = append(stepsWithTriggers, fn)
	}
	slices.Sort(stepsWithTriggers)

	broker := []policyTo{{Ref: ref{APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: BrokerName}}}
	doc := func(name, what string, from []policyFrom, filters []Filter) policyDoc {
		return policyDoc{APIVersion: "eventing.knative.dev/v1alpha1", Kind: "EventPolicy",
			Metadata: triggerMeta{Name: "sender-" + name, Namespace: Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "parry", "parry.dev/sender": what}},
			Spec: policySpec{To: broker, From: from, Filters: filters}}
	}
	docs := []policyDoc{
		doc("sensor", "sensor", []policyFrom{{Sub: "system:serviceaccount:" + SensorNamespace + ":" + SensorServiceAccount}},
			[]Filter{{Prefix: map[string]string{"type": events.TypeSensorPrefix}}, {Not: &Filter{Prefix: map[string]string{"type": events.TypeFalcoPrefix}}}}),
		// Other tools' adapters: each only the detections it translates.
		doc("falco", "falco", []policyFrom{{Sub: "system:serviceaccount:" + Namespace + ":" + FalcoAdapterServiceAccount}},
			[]Filter{{Exact: map[string]string{"type": events.TypeFalcoAlert}}}),
		doc("tetragon", "tetragon", []policyFrom{{Sub: "system:serviceaccount:" + TetragonIngestNamespace + ":" + TetragonIngestServiceAccount}},
			[]Filter{{Exact: map[string]string{"type": events.TypeProcessExec}}}),
		// functions/failed's ServiceAccount is named after it.
		doc(DeadLetterFunction, DeadLetterFunction, []policyFrom{{Sub: "system:serviceaccount:" + Namespace + ":" + DeadLetterFunction}},
			[]Filter{{Prefix: map[string]string{"type": typeStepPrefix}}, {Suffix: map[string]string{"type": typeFailedSuffix}}}),
		doc("incident-closer", "incident-closer", []policyFrom{
			{Sub: "system:serviceaccount:" + Namespace + ":" + IncidentCloserServiceAccount},
			{Sub: LocalOperator},
		}, []Filter{{Exact: map[string]string{"type": events.TypeIncidentClosed}}}),
	}
	for _, fn := range stepsWithTriggers {
		var from []policyFrom
		for _, t := range triggers[fn] {
			from = append(from, policyFrom{Ref: &policyRef{APIVersion: "eventing.knative.dev/v1", Kind: "Trigger", Name: t, Namespace: Namespace}})
		}
		own := Filter{Prefix: map[string]string{"type": typeStepPrefix + fn + "."}}
		filters := []Filter{own}
		if fn == RootFunction {
			// classify opens incidents; only a person closes one.
			opens := []Filter{own}
			for _, typ := range classifyIncidentTypes {
				opens = append(opens, Filter{Exact: map[string]string{"type": typ}})
			}
			filters = []Filter{{Any: opens}}
		}
		docs = append(docs, doc("step-"+fn, fn, from, filters))
	}
	var buf bytes.Buffer
	buf.WriteString("# Generated by `parry playbook compile`. DO NOT EDIT.\n" +
		"# Who may send which events to the Broker. Knative enforces them once\n" +
		"# config/150-knative-features.yaml turns OIDC sender authentication on;\n" +
		"# parry run's embedded broker enforces this file.\n")
	for i, d := range docs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		if err := encode(&buf, d); err != nil {
			panic(err) // static shape; cannot fail
		}
	}
	return buf.Bytes()
}

func configMapYAML(namespace, name, key, comment string, data []byte) []byte {
	doc := map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": name, "namespace": namespace, "labels": map[string]string{"app.kubernetes.io/part-of": "parry"}},
		"data":     map[string]string{key: string(data)},
	}
	var buf bytes.Buffer
	buf.WriteString("# Generated by `parry playbook compile`. DO NOT EDIT.\n# " + comment + "\n")
	if err := encode(&buf, doc); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func encode(buf *bytes.Buffer, v any) error {
	enc := yaml.NewEncoder(buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return enc.Close()
}

// brokerYAML lets manifest.Parse resolve the Triggers' Broker.
func brokerYAML() []byte {
	return []byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: " + BrokerName + ", namespace: " + Namespace + "}\n---\n")
}

func baseName(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[i+1:]
	}
	return p
}
