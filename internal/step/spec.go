package step

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
)

// ParamType is the type of a step parameter.
type ParamType string

const (
	String     ParamType = "string"
	Int        ParamType = "int"
	Bool       ParamType = "bool"
	Duration   ParamType = "duration"
	StringList ParamType = "[]string"
)

// Param declares one parameter of a step.
type Param struct {
	Name        string
	Type        ParamType
	Required    bool
	Default     string
	Enum        []string
	Description string
}

// Spec declares a step: its name (the Knative Service name, its main under
// cmd/<name>, and the <name> in dev.parry.step.<name>.done.v1), what it
// does, its parameters, the RBAC rules it needs in a cluster, an example
// playbook step, and what the runtime and the manifest renderer must
// provide. Nothing about a step is special-cased by name elsewhere.
type Spec struct {
	Name        string
	Description string
	Params      []Param
	// ClusterRules are the Kubernetes permissions of the step's own
	// ServiceAccount: exactly the verbs it uses, nothing more.
	ClusterRules []rbacv1.PolicyRule
	Example      string

	// Target is what the event must name for the step to act.
	Target Target
	// Playbook: playbooks may name the step, and it reads its parameters
	// and guardrails from the event's playbook. The dead-letter sink is no
	// playbook step.
	Playbook bool
	// Root: the step every playbook starts with (classify), which receives
	// sensor events of no playbook and matches the playbooks itself.
	Root bool
	// DryRun says the action honours Request.DryRun by describing what it
	// would do; the runtime does not call an action that cannot, in a dry
	// run.
	DryRun bool
	// Replies says the action answers with events of its own types
	// (classify's incident events) or none, instead of done.
	Replies bool
	// Sensors: the step talks to the node sensors' API.
	Sensors bool
	// Vault: the step needs a Vault client.
	Vault bool
	// Publishes: the step sends events to the Broker itself (K_SINK).
	Publishes bool
	// State: the step keeps files under Deps.StateDir.
	State bool
	// Postgres: in a cluster the step keeps its state in PostgreSQL
	// (Deps.Postgres) instead of files, so that it survives restarts and
	// is shared by every replica; it refuses to start without a
	// connection string. Under parry run it keeps its files (State).
	Postgres bool
	// Secret names a Secret the step's pod mounts read-only in a cluster
	// (optional, so the Service starts without it) at SecretDir, given to
	// the step as Deps.SecretDir; "" for none.
	Secret string
	// EnvSecret names a Secret whose keys a cluster gives the step's
	// container as environment variables (optional, so the Service starts
	// without it), read through Deps.Getenv: settings that carry
	// credentials. "" for none.
	EnvSecret string
	// Volume is storage that outlives the pod, mounted in a cluster
	// below the state directory; the zero Volume is none.
	Volume Volume
	// Account is the ServiceAccount's name; "parry-<Name>" when empty.
	Account string
	// Delivery is how the broker retries the step's Trigger before it
	// dead-letters the event; the playbook compiler writes it into every
	// Trigger of the step.
	Delivery Delivery
}

// Delivery is a Trigger's retry policy: Retry more attempts after the
// first, exponential backoff from Backoff (Backoff·2ⁿ before retry n+1),
// and each attempt cut off after Timeout. Choose Retry and Backoff so the
// retries outlast a short outage of what the step calls (the API server
// restarting), and Timeout above the step's own longest wait.
type Delivery struct {
	Retry   int
	Backoff time.Duration
	Timeout time.Duration
}

// Volume is a PersistentVolumeClaim that a cluster mounts read-write at
// <state dir>/<Dir> (snapshot's evidence bundles). The claim is the
// user's, shipped in config/ beside the step's Service; a step with one
// runs at most one replica, since most volumes attach to one node.
type Volume struct {
	Claim string
	Dir   string
}

// NeedsIncidentKey: classify seals the incidents it opens and every step
// that acts on an incident verifies the seal (Seal), so both get the key.
func (s Spec) NeedsIncidentKey() bool { return s.Root || s.Target != TargetNone }

// ServiceAccount is the name of the step's ServiceAccount in a cluster.
func (s Spec) ServiceAccount() string {
	if s.Account != "" {
		return s.Account
	}
	return "parry-" + s.Name
}

// Target is what an event must name for a step to act on it.
type Target int

const (
	// TargetNone: the step acts on no pod (classify, the dead-letter sink).
	TargetNone Target = iota
	// TargetPod: an incident and the pod's UID (with a cluster, its
	// namespace and name too), which the runtime checks against the API
	// server before the action runs (Request.Pod).
	TargetPod
	// TargetIncident: an incident; the step finds what it acts on itself
	// (revoke, whose modes need different parts of the pod).
	TargetIncident
)

// Params are the validated parameters one playbook gives one step.
type Params map[string]string

// String returns the parameter's value ("" when unset and without default).
func (p Params) String(name string) string { return p[name] }

// Int returns an int parameter; Validate has checked it parses.
func (p Params) Int(name string) int { n, _ := strconv.Atoi(p[name]); return n }

// Bool returns a bool parameter.
func (p Params) Bool(name string) bool { b, _ := strconv.ParseBool(p[name]); return b }

// Duration returns a duration parameter.
func (p Params) Duration(name string) time.Duration { d, _ := time.ParseDuration(p[name]); return d }

// List returns a []string parameter, stored comma-separated.
func (p Params) List(name string) []string {
	if p[name] == "" {
		return nil
	}
	return strings.Split(p[name], ",")
}

// Validate checks raw parameters (as decoded from a playbook's YAML) against
// the spec and returns them typed, with defaults applied. Every problem is
// reported, each naming the parameter.
func (s Spec) Validate(raw map[string]any) (Params, error) {
	out := Params{}
	var errs []error
	for name := range raw {
		if !slices.ContainsFunc(s.Params, func(p Param) bool { return p.Name == name }) {
			errs = append(errs, fmt.Errorf("step %s has no parameter %q (it takes: %s)", s.Name, name, s.paramNames()))
		}
	}
	for _, p := range s.Params {
		v, ok := raw[p.Name]
		if !ok {
			if p.Required {
				errs = append(errs, fmt.Errorf("step %s: parameter %q is required: %s", s.Name, p.Name, p.Description))
			} else if p.Default != "" {
				out[p.Name] = p.Default
			}
			continue
		}
		text, err := p.text(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("step %s: parameter %q: %w", s.Name, p.Name, err))
			continue
		}
		out[p.Name] = text
	}
	return out, errors.Join(errs...)
}

func (s Spec) paramNames() string {
	if len(s.Params) == 0 {
		return "none"
	}
	names := make([]string, len(s.Params))
	for i, p := range s.Params {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

func (p Param) text(v any) (string, error) {
	switch p.Type {
	case StringList:
		items, ok := v.([]any)
		if !ok {
			return "", fmt.Errorf("want a list of strings, got %T", v)
		}
		parts := make([]string, len(items))
		for i, it := range items {
			s, ok := it.(string)
			if !ok || strings.Contains(s, ",") {
				return "", fmt.Errorf("item %d: want a string without commas, got %v", i, it)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	case Int:
		switch n := v.(type) {
		case int:
			return strconv.Itoa(n), nil
		case int64:
			return strconv.FormatInt(n, 10), nil
		case uint64:
			return strconv.FormatUint(n, 10), nil
		}
		return "", fmt.Errorf("want an integer, got %v", v)
	case Bool:
		if b, ok := v.(bool); ok {
			return strconv.FormatBool(b), nil
		}
		return "", fmt.Errorf("want true or false, got %v", v)
	case Duration:
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want a duration such as 30s or 5m, got %v", v)
		}
		if _, err := time.ParseDuration(s); err != nil {
			return "", fmt.Errorf("want a duration such as 30s or 5m: %w", err)
		}
		return s, nil
	default:
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want a string, got %v", v)
		}
		if len(p.Enum) > 0 && !slices.Contains(p.Enum, s) {
			return "", fmt.Errorf("%q is not one of %s", s, strings.Join(p.Enum, ", "))
		}
		return s, nil
	}
}
