package playbook

import (
	"time"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
)

// APIVersion and Kind identify a playbook document.
const (
	APIVersion = "parry.dev/v1alpha1"
	Kind       = "Playbook"
)

// Severities in increasing order; Score gives their base points.
var Severities = []string{"low", "medium", "high", "critical"}

// Step outcomes a step can be conditional on.
const (
	WhenSucceeded = "succeeded"
	WhenFailed    = "failed"
	WhenAlways    = "always"
)

// RootFunction is the step every playbook starts with: only classify turns
// raw sensor events into incidents the other steps act on.
const RootFunction = "classify"

// Playbook is one playbook document.
type Playbook struct {
	APIVersion  string     `yaml:"apiVersion" json:"apiVersion"`
	Kind        string     `yaml:"kind" json:"kind"`
	Metadata    Metadata   `yaml:"metadata" json:"metadata"`
	Description string     `yaml:"description" json:"description"`
	Severity    string     `yaml:"severity" json:"severity"`
	Match       []Filter   `yaml:"match" json:"match"`
	Sensor      Sensor     `yaml:"sensor,omitempty" json:"sensor,omitempty"`
	Steps       []Step     `yaml:"steps" json:"steps"`
	Guardrails  Guardrails `yaml:"guardrails,omitempty" json:"guardrails,omitempty"`
}

// Metadata names the playbook; the name is the playbook extension value.
type Metadata struct {
	Name        string            `yaml:"name" json:"name"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Filter is one Knative Trigger filter (the SubscriptionsAPI dialects).
type Filter struct {
	Exact  map[string]string `yaml:"exact,omitempty" json:"exact,omitempty"`
	Prefix map[string]string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Suffix map[string]string `yaml:"suffix,omitempty" json:"suffix,omitempty"`
	All    []Filter          `yaml:"all,omitempty" json:"all,omitempty"`
	Any    []Filter          `yaml:"any,omitempty" json:"any,omitempty"`
	Not    *Filter           `yaml:"not,omitempty" json:"not,omitempty"`
	CESQL  string            `yaml:"cesql,omitempty" json:"cesql,omitempty"`
}

// Knative converts f to Knative's own filter type.
func (f Filter) Knative() eventingv1.SubscriptionsAPIFilter {
	k := eventingv1.SubscriptionsAPIFilter{Exact: f.Exact, Prefix: f.Prefix, Suffix: f.Suffix, CESQL: f.CESQL}
	k.All = Knative(f.All)
	k.Any = Knative(f.Any)
	if f.Not != nil {
		n := f.Not.Knative()
		k.Not = &n
	}
	return k
}

// Knative converts a filter list.
func Knative(fs []Filter) []eventingv1.SubscriptionsAPIFilter {
	if len(fs) == 0 {
		return nil
	}
	out := make([]eventingv1.SubscriptionsAPIFilter, len(fs))
	for i, f := range fs {
		out[i] = f.Knative()
	}
	return out
}

// Sensor is what the sensor must watch for the playbook to see its events;
// compile merges it into the SensorFilters of all playbooks.
type Sensor struct {
	// Exec lists executable basenames whose execs must be reported;
	// ExecAll reports every exec (needed to match on paths, not names).
	Exec    []string `yaml:"exec,omitempty" json:"exec,omitempty"`
	ExecAll bool     `yaml:"execAll,omitempty" json:"execAll,omitempty"`
	// Ports are connect destination ports; ConnectAll every connect.
	Ports      []uint16 `yaml:"ports,omitempty" json:"ports,omitempty"`
	ConnectAll bool     `yaml:"connectAll,omitempty" json:"connectAll,omitempty"`
	// Paths are file path prefixes whose opens must be reported.
	Paths []string `yaml:"paths,omitempty" json:"paths,omitempty"`
	// Signals are privilege signals (setuid, ptrace, exec-memfd, ...).
	Signals []string `yaml:"signals,omitempty" json:"signals,omitempty"`
}

// Step runs one function. Function is the Knative Service name and the
// <name> in the step's reply types; it is unique within a playbook.
type Step struct {
	// Name labels the step for after:; it defaults to Function.
	Name     string `yaml:"name,omitempty" json:"name,omitempty"`
	Function string `yaml:"function" json:"function"`
	// After names the step (by name) whose reply triggers this one; empty only for
	// the root (classify). Steps with the same After run in parallel.
	After string `yaml:"after,omitempty" json:"after,omitempty"`
	// When is the outcome of After this step needs: succeeded (default),
	// failed or always.
	When   string         `yaml:"when,omitempty" json:"when,omitempty"`
	Params map[string]any `yaml:"params,omitempty" json:"params,omitempty"`
}

// Guardrails bound what a playbook may do.
type Guardrails struct {
	// ProtectedNamespaces are added to kube-system, parry-system and parry-sensor.
	ProtectedNamespaces []string `yaml:"protectedNamespaces,omitempty" json:"protectedNamespaces,omitempty"`
	// RateLimit trips the playbook's circuit breaker: past it, incidents
	// are still opened but escalated, not acted on, until Per has passed.
	RateLimit *RateLimit `yaml:"rateLimit,omitempty" json:"rateLimit,omitempty"`
	// DryRun: steps report what they would do and change nothing.
	DryRun bool `yaml:"dryRun,omitempty" json:"dryRun,omitempty"`
	// RequireHealthySensor escalates instead of acting when the node's
	// sensor reported a loss within SensorLossWindow.
	RequireHealthySensor bool `yaml:"requireHealthySensor,omitempty" json:"requireHealthySensor,omitempty"`
}

// RateLimit is at most Incidents incidents per Per.
type RateLimit struct {
	Incidents int    `yaml:"incidents" json:"incidents"`
	Per       string `yaml:"per" json:"per"`
}

// Defaults applied by Compile.
const (
	DefaultRateIncidents = 10
	DefaultRatePer       = 10 * time.Minute
)

// ID is the step's name, defaulting to its function.
func (s Step) ID() string {
	if s.Name != "" {
		return s.Name
	}
	return s.Function
}
