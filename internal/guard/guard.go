// Package guard enforces a playbook's guardrails inside classify and every
// response step, not only at compile time: protected namespaces
// (kube-system and parry's own always, so parry's own pods are recognised
// by namespace, never by a label a workload could set on itself), and a
// per-playbook rate limit on distinct pods whose circuit breaker stops a
// runaway playbook from quarantining a fleet.
//
// A refusal is not an error: the step replies dev.parry.step.<name>.failed.v1
// with Refusal's reason (classify escalates instead), so the trace says why
// nothing happened.
package guard

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// AlwaysProtected are the namespaces no playbook may act in, whatever it
// says: the cluster's own and parry's (its steps' and its sensor's).
func AlwaysProtected() []string { return []string{"kube-system", "parry-sensor", "parry-system"} }

// IsProtected reports whether no step may act in namespace: the always
// protected ones plus the playbook's own list.
func IsProtected(namespace string, extra []string) bool {
	return slices.Contains(AlwaysProtected(), namespace) || slices.Contains(extra, namespace)
}

// Rules are one playbook's guardrails as compiled into the playbook bundle:
// the always-protected namespaces and the default rate limit filled in.
type Rules struct {
	ProtectedNamespaces []string `yaml:"protectedNamespaces" json:"protectedNamespaces"`
	// RateIncidents is how many distinct pods the playbook may act on per
	// RatePer before its breaker opens (the name predates counting pods:
	// incident ids are not counted, so reusing or inventing them neither
	// passes nor trips the limit); zero means no limit.
	RateIncidents int `yaml:"rateIncidents" json:"rateIncidents"`
	// RatePer is a duration (10m). It is also the breaker's cooldown: an
	// open breaker refuses for one window.
	RatePer              string `yaml:"ratePer" json:"ratePer"`
	DryRun               bool   `yaml:"dryRun" json:"dryRun"`
	RequireHealthySensor bool   `yaml:"requireHealthySensor" json:"requireHealthySensor"`
}

// Per is the rate limit's window, one minute when unset or malformed.
func (r Rules) Per() time.Duration {
	if d, err := time.ParseDuration(r.RatePer); err == nil && d > 0 {
		return d
	}
	return time.Minute
}

// Refusal says why a step must not act.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

// Target is what a step is about to act on: the pod as the API server
// has it (its namespace resolved from its UID), never as an event claims.
type Target struct {
	Playbook  string
	Namespace string
	// Pod is what the rate limit counts: the pod's UID (or, for an event
	// without one, its node).
	Pod string
}

// Check refuses protected namespaces, parry's own among them.
func Check(t Target, rules Rules) *Refusal {
	if IsProtected(t.Namespace, rules.ProtectedNamespaces) {
		return &Refusal{Reason: fmt.Sprintf("refused: namespace %s is protected", t.Namespace)}
	}
	return nil
}

// Guard holds the breakers of one step's playbooks in memory. It is safe for
// concurrent use; a step creates one and keeps it.
type Guard struct {
	mu       sync.Mutex
	breakers map[string]*Breaker
	now      func() time.Time
}

// New returns a Guard.
func New() *Guard { return &Guard{breakers: map[string]*Breaker{}, now: time.Now} }

// Admit returns nil when the step may act on t under rules, or a *Refusal.
// A pod already admitted stays admitted (redeliveries, later steps and
// later incidents of the same pod are not counted twice).
func (g *Guard) Admit(t Target, rules Rules) *Refusal {
	if r := Check(t, rules); r != nil {
		return r
	}
	if rules.RateIncidents <= 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.breakers[t.Playbook]
	if !ok {
		b = &Breaker{}
		g.breakers[t.Playbook] = b
	}
	return b.Admit(g.now(), t.Playbook, t.Pod, rules)
}

// Breaker is one playbook's circuit breaker: it opens when a pod would be
// the (RateIncidents+1)th distinct pod within RatePer, and then refuses
// every new pod for RatePer. Its fields are exported so that classify can
// keep it across restarts; it is not safe for concurrent use.
type Breaker struct {
	Admitted  map[string]time.Time `json:"admittedPods"` // pod → first admitted
	OpenUntil time.Time            `json:"openUntil"`
}

// Admit admits pod for playbook at now, or refuses it.
func (b *Breaker) Admit(now time.Time, playbook, pod string, rules Rules) *Refusal {
	if _, ok := b.Admitted[pod]; ok {
		return nil
	}
	if b.Admitted == nil {
		b.Admitted = map[string]time.Time{}
	}
	per := rules.Per()
	if now.Before(b.OpenUntil) {
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s is open until %s (more than %d pods in %s)", playbook, b.OpenUntil.UTC().Format(time.RFC3339), rules.RateIncidents, per)}
	}
	recent := 0
	for id, at := range b.Admitted {
		if now.Sub(at) > per {
			delete(b.Admitted, id)
			continue
		}
		recent++
	}
	if recent >= rules.RateIncidents {
		b.OpenUntil = now.Add(per)
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s opened: pod %s would be the %dth pod in %s, the limit is %d; it stays open until %s", playbook, pod, recent+1, per, rules.RateIncidents, b.OpenUntil.UTC().Format(time.RFC3339))}
	}
	b.Admitted[pod] = now
	return nil
}
