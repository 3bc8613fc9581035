package playbook

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor/filters"
)

// Registry is the steps a playbook may use, by function name, with their
// declared parameters. It is injected so that the CLI, tests and functions
// agree on one list without a package-level table.
type Registry map[string]step.Spec

// Names lists the registered steps, sorted.
func (r Registry) Names() []string { return sortedKeys(r) }

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	attributeRE = regexp.MustCompile(`^[a-z0-9]{1,20}$`)
	paramRE     = regexp.MustCompile(`parameter "([^"]+)"`)
)

// maxNameLen keeps "<playbook>-<function>" within a Kubernetes name.
const maxNameLen = 40

// Validate checks the playbooks against the format, the registry and each
// other (names are unique across files). Every problem is reported with
// its position.
func Validate(srcs []*Source, reg Registry) manifest.Errors {
	var errs manifest.Errors
	seen := map[string]*Source{}
	for _, s := range srcs {
		errs = append(errs, validateOne(s, reg)...)
		if prev, dup := seen[s.Metadata.Name]; dup && s.Metadata.Name != "" {
			errs = append(errs, s.errorf("metadata.name", "playbook %q is also defined at %s", s.Metadata.Name, prev.Pos("metadata.name")))
		}
		seen[s.Metadata.Name] = s
	}
	return errs
}

func validateOne(s *Source, reg Registry) manifest.Errors {
	var errs manifest.Errors
	add := func(path, format string, args ...any) { errs = append(errs, s.errorf(path, format, args...)) }
	if s.APIVersion != APIVersion {
		add("apiVersion", "apiVersion %q: want %s", s.APIVersion, APIVersion)
	}
	if s.Kind != Kind {
		add("kind", "kind %q: want %s", s.Kind, Kind)
	}
	if n := s.Metadata.Name; !nameRE.MatchString(n) || len(n) > maxNameLen {
		add("metadata.name", "metadata.name %q: want 1-%d characters of a-z, 0-9 and -, starting and ending with a letter or digit", n, maxNameLen)
	}
	if strings.TrimSpace(s.Description) == "" {
		add("description", "description is empty: say what attack this playbook answers (it appears in the trace)")
	}
	if !slices.Contains(Severities, s.Severity) {
		add("severity", "severity %q: want one of %s", s.Severity, strings.Join(Severities, ", "))
	}
	if len(s.Match) == 0 {
		add("match", "match is empty: a playbook must say which events it answers (at least a type)")
	}
	for i, f := range s.Match {
		errs = append(errs, validateFilter(s, fmt.Sprintf("match[%d]", i), f, false)...)
	}
	errs = append(errs, validateSensor(s)...)
	errs = append(errs, validateSteps(s, reg)...)
	errs = append(errs, validateGuardrails(s)...)
	return errs
}

// validateFilter checks one filter. Under not (negated), naming a protected
// namespace excludes it, which is allowed.
func validateFilter(s *Source, path string, f Filter, negated bool) manifest.Errors {
	var errs manifest.Errors
	add := func(p, format string, args ...any) { errs = append(errs, s.errorf(p, format, args...)) }
	dialects := manifest.Dialects(f.Knative())
	switch len(dialects) {
	case 0:
		add(path, "filter sets no dialect: use one of exact, prefix, suffix, all, any, not, cesql")
		return errs
	case 1:
	default:
		add(path, "filter sets %s: a filter has exactly one dialect; combine them with all or any", strings.Join(dialects, " and "))
		return errs
	}
	for dialect, m := range map[string]map[string]string{"exact": f.Exact, "prefix": f.Prefix, "suffix": f.Suffix} {
		for _, attr := range sortedKeys(m) {
			p := path + "." + dialect + "." + attr
			if !attributeRE.MatchString(attr) {
				add(p, "attribute %q: CloudEvents attribute names are 1-20 characters of a-z and 0-9", attr)
			}
			if m[attr] == "" {
				add(p, "%s %s: the value is empty (Knative would skip this filter and match more than intended)", dialect, attr)
			}
			if attr == events.ExtPodNamespace && !negated {
				for _, ns := range guard.AlwaysProtected() {
					if (dialect == "exact" && m[attr] == ns) || (dialect == "prefix" && strings.HasPrefix(ns, m[attr])) || (dialect == "suffix" && strings.HasSuffix(ns, m[attr])) {
						add(p, "%s %s %q selects the protected namespace %s: parry never acts there (drop this filter or use not: to exclude it)", dialect, attr, m[attr], ns)
					}
				}
			}
		}
	}
	for i, sub := range f.All {
		errs = append(errs, validateFilter(s, fmt.Sprintf("%s.all[%d]", path, i), sub, negated)...)
	}
	for i, sub := range f.Any {
		errs = append(errs, validateFilter(s, fmt.Sprintf("%s.any[%d]", path, i), sub, negated)...)
	}
	if f.Not != nil {
		errs = append(errs, validateFilter(s, path+".not", *f.Not, !negated)...)
	}
	if f.CESQL != "" {
		if reason := manifest.Unbuildable(Filter{CESQL: f.CESQL}.Knative()); reason != "" {
			add(path+".cesql", "%s", reason)
		}
		for _, ns := range guard.AlwaysProtected() {
			if negated {
				break
			}
			if strings.Contains(f.CESQL, "'"+ns+"'") || strings.Contains(f.CESQL, `"`+ns+`"`) {
				add(path+".cesql", "the expression names the protected namespace %s: parry never acts there", ns)
			}
		}
	}
	return errs
}

func validateSensor(s *Source) manifest.Errors {
	c := sensorFilters(s.Sensor)
	if err := c.Validate(); err != nil {
		return manifest.Errors{s.errorf("sensor", "sensor: %v", strings.ReplaceAll(err.Error(), "\n", "; "))}
	}
	return nil
}

func validateSteps(s *Source, reg Registry) manifest.Errors {
	var errs manifest.Errors
	add := func(path, format string, args ...any) { errs = append(errs, s.errorf(path, format, args...)) }
	if len(s.Steps) == 0 {
		add("steps", "steps is empty: a playbook needs at least the %s step", RootFunction)
		return errs
	}
	index := map[string]int{}     // step id → position
	functions := map[string]int{} // function → position
	for i, st := range s.Steps {
		p := fmt.Sprintf("steps[%d]", i)
		spec, known := reg[st.Function]
		switch {
		case st.Function == "":
			add(p, "step has no function")
		case !known:
			add(p+".function", "unknown step %q (known steps: %s)", st.Function, strings.Join(reg.Names(), ", "))
		default:
			if _, err := spec.Validate(st.Params); err != nil {
				for _, e := range splitJoined(err) {
					// Point at the parameter the message names, when given.
					at := p + ".params"
					if m := paramRE.FindStringSubmatch(e); m != nil {
						if _, given := st.Params[m[1]]; given {
							at += "." + m[1]
						}
					}
					add(at, "%s", e)
				}
			}
		}
		if st.Name != "" && !nameRE.MatchString(st.Name) {
			add(p+".name", "step name %q: want a-z, 0-9 and -", st.Name)
		}
		if prev, dup := functions[st.Function]; dup && st.Function != "" {
			add(p+".function", "function %q already runs as steps[%d]: a function runs once per playbook (its reply type names it)", st.Function, prev)
		} else {
			functions[st.Function] = i
		}
		if prev, dup := index[st.ID()]; dup && st.ID() != "" && st.Name != "" {
			add(p+".name", "step name %q is already steps[%d]", st.Name, prev)
		} else {
			index[st.ID()] = i
		}
		switch st.When {
		case "", WhenSucceeded, WhenFailed, WhenAlways:
		default:
			add(p+".when", "when %q: want %s, %s or %s", st.When, WhenSucceeded, WhenFailed, WhenAlways)
		}
		if st.After == "" {
			if st.Function != RootFunction {
				add(p, "step %q has no after: only %s starts a playbook (it turns sensor events into the incident the other steps act on)", st.ID(), RootFunction)
			}
			if st.When != "" {
				add(p+".when", "when needs after: the root step has no previous outcome")
			}
			continue
		}
		if st.Function == RootFunction {
			add(p+".after", "%s is the root step and runs on the playbook's match, not after %q", RootFunction, st.After)
		}
		if j, ok := index[st.After]; ok && s.Steps[j].Function == RootFunction && st.When != "" && st.When != WhenSucceeded {
			add(p+".when", "%s either opens an incident or does not: a step after it can only run when it succeeded", RootFunction)
		}
	}
	if _, ok := functions[RootFunction]; !ok {
		add("steps", "no %s step: every playbook starts with %s", RootFunction, RootFunction)
	}
	for i, st := range s.Steps {
		if st.After != "" {
			if _, ok := index[st.After]; !ok {
				add(fmt.Sprintf("steps[%d].after", i), "after %q: this playbook has no step named %q", st.After, st.After)
			}
		}
	}
	// Each step has at most one predecessor, so the graph is a forest: a
	// step is reachable when following after ends at the root, and a cycle
	// is a walk that comes back to a step it has seen.
	for i, st := range s.Steps {
		seen := map[string]bool{st.ID(): true}
		cur := st
		for cur.After != "" {
			j, ok := index[cur.After]
			if !ok {
				break
			}
			if seen[cur.After] {
				add(fmt.Sprintf("steps[%d].after", i), "step %q is part of a cycle (%s): steps run after one another, never in a loop", st.ID(), cycle(s.Steps, index, st.ID()))
				break
			}
			seen[cur.After] = true
			cur = s.Steps[j]
		}
		if cur.After == "" && cur.Function != RootFunction && st.ID() != cur.ID() {
			add(fmt.Sprintf("steps[%d]", i), "step %q is unreachable: it does not descend from %s", st.ID(), RootFunction)
		}
	}
	if j, ok := functions[respawnFunction]; ok {
		if _, ok := functions[isolateFunction]; !ok {
			add(fmt.Sprintf("steps[%d]", j), "step %q respawns a pod that no isolate step quarantines: in a cluster respawn may delete only a quarantined pod (config/521-respawn-create-delete-admission.yaml), so the playbook needs an isolate step", s.Steps[j].ID())
		}
	}
	return errs
}

// isolateFunction and respawnFunction go together: respawn deletes only
// what isolate quarantined.
const (
	isolateFunction = "isolate"
	respawnFunction = "respawn"
)

func cycle(steps []Step, index map[string]int, start string) string {
	path := []string{start}
	cur := steps[index[start]]
	for range len(steps) {
		path = append(path, cur.After)
		if cur.After == start {
			break
		}
		j, ok := index[cur.After]
		if !ok {
			break
		}
		cur = steps[j]
	}
	return strings.Join(path, " after ")
}

func splitJoined(err error) []string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

func validateGuardrails(s *Source) manifest.Errors {
	var errs manifest.Errors
	g := s.Guardrails
	for i, ns := range g.ProtectedNamespaces {
		if !nameRE.MatchString(ns) {
			errs = append(errs, s.errorf(fmt.Sprintf("guardrails.protectedNamespaces[%d]", i), "%q is not a namespace name", ns))
		}
	}
	if r := g.RateLimit; r != nil {
		if r.Incidents < 1 {
			errs = append(errs, s.errorf("guardrails.rateLimit.incidents", "rateLimit.incidents must be at least 1"))
		}
		if d, err := time.ParseDuration(r.Per); err != nil || d <= 0 {
			errs = append(errs, s.errorf("guardrails.rateLimit.per", "rateLimit.per %q: want a positive duration such as 10m", r.Per))
		}
	}
	return errs
}

// sensorFilters is a playbook's own share of the SensorFilters.
func sensorFilters(s Sensor) filters.Config {
	return filters.Config{
		APIVersion: filters.APIVersion, Kind: filters.Kind, Scope: "pods", PodRoots: baseSensorFilters().PodRoots,
		Exec:    filters.Exec{All: s.ExecAll, Names: s.Exec},
		Connect: filters.Connect{All: s.ConnectAll, Ports: s.Ports},
		Files:   filters.Files{Prefixes: s.Paths},
		Signals: s.Signals,
	}
}
