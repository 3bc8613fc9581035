// Package guard enforces a playbook's guardrails inside classify and every
// response step, not only at compile time: protected namespaces
// (kube-system and parry-system always), parry's own pods, and a
// per-playbook rate limit whose circuit breaker stops a runaway playbook
// from quarantining a fleet.
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

	"parry.dev/parry/internal/labels"
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
	// RateIncidents is how many distinct incidents the playbook may act on
	// per RatePer before its breaker opens; zero means no limit.
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

// Target is what a step is about to act on.
type Target struct {
	Playbook  string
	Incident  string
	Namespace string
	PodLabels map[string]string
}

// Check refuses protected namespaces and parry's own pods.
func Check(t Target, rules Rules) *Refusal {
	if IsProtected(t.Namespace, rules.ProtectedNamespaces) {
		return &Refusal{Reason: fmt.Sprintf("refused: namespace %s is protected", t.Namespace)}
	}
	if t.PodLabels[labels.PartOf] == labels.PartOfParry {
		return &Refusal{Reason: fmt.Sprintf("refused: the pod is part of parry (%s=%s)", labels.PartOf, labels.PartOfParry)}
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
// An incident already admitted stays admitted (redeliveries and later steps
// of the same incident are not counted twice).
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
	return b.Admit(g.now(), t.Playbook, t.Incident, rules)
}

// Breaker is one playbook's circuit breaker: it opens when an incident would
// be the (RateIncidents+1)th within RatePer, and then refuses every new
// incident for RatePer. Its fields are exported so that classify can keep
// it across restarts; it is not safe for concurrent use.
type Breaker struct {
	Admitted  map[string]time.Time `json:"admitted"` // incident → first admitted
	OpenUntil time.Time            `json:"openUntil"`
}

// Admit admits incident of playbook at now, or refuses it.
func (b *Breaker) Admit(now time.Time, playbook, incident string, rules Rules) *Refusal {
	if _, ok := b.Admitted[incident]; ok {
		return nil
	}
	if b.Admitted == nil {
		b.Admitted = map[string]time.Time{}
	}
	per := rules.Per()
	if now.Before(b.OpenUntil) {
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s is open until %s (more than %d incidents in %s)", playbook, b.OpenUntil.UTC().Format(time.RFC3339), rules.RateIncidents, per)}
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
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s opened: incident %s would be the %dth in %s, the limit is %d; it stays open until %s", playbook, incident, recent+1, per, rules.RateIncidents, b.OpenUntil.UTC().Format(time.RFC3339))}
	}
	b.Admitted[incident] = now
	return nil
}
