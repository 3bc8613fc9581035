// Package guard enforces a playbook's guardrails inside every response step,
// not only at compile time: protected namespaces (kube-system and
// parry-system always), parry's own pods, and a per-playbook rate limit whose
// circuit breaker stops a runaway playbook from quarantining a fleet.
//
// A refusal is not an error: the step replies dev.parry.step.<name>.failed.v1
// with Refusal's reason, so the trace says why nothing happened.
package guard

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// AlwaysProtected are the namespaces no playbook may act in, whatever it
// says: the cluster's own and parry's.
func AlwaysProtected() []string { return []string{"kube-system", "parry-system"} }

// IsProtected reports whether no step may act in namespace: the always
// protected ones plus the playbook's own list.
func IsProtected(namespace string, extra []string) bool {
	return slices.Contains(AlwaysProtected(), namespace) || slices.Contains(extra, namespace)
}

// PartOfLabel marks parry's own pods (app.kubernetes.io/part-of=parry);
// parry never acts on them.
const PartOfLabel = "app.kubernetes.io/part-of"

// Rules are one playbook's guardrails.
type Rules struct {
	ProtectedNamespaces []string
	// RateLimit is how many distinct incidents the playbook may act on per
	// RatePer before its breaker opens; zero means no limit.
	RateLimit int
	RatePer   time.Duration
	// Cooldown is how long an open breaker refuses; default RatePer × 10.
	Cooldown time.Duration
}

// Refusal says why a step must not act.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

// Guard holds the breakers of one step's playbooks. It is safe for
// concurrent use; a step creates one and keeps it.
type Guard struct {
	mu       sync.Mutex
	breakers map[string]*breaker
	now      func() time.Time
}

// New returns a Guard.
func New() *Guard { return &Guard{breakers: map[string]*breaker{}, now: time.Now} }

// Target is what a step is about to act on.
type Target struct {
	Playbook  string
	Incident  string
	Namespace string
	PodLabels map[string]string
}

// Admit returns nil when the step may act on t under rules, or a *Refusal.
// An incident already admitted stays admitted (redeliveries and later steps
// of the same incident are not counted twice).
func (g *Guard) Admit(t Target, rules Rules) *Refusal {
	if IsProtected(t.Namespace, rules.ProtectedNamespaces) {
		return &Refusal{Reason: fmt.Sprintf("refused: namespace %s is protected", t.Namespace)}
	}
	if t.PodLabels[PartOfLabel] == "parry" {
		return &Refusal{Reason: fmt.Sprintf("refused: the pod is part of parry (%s=parry)", PartOfLabel)}
	}
	if rules.RateLimit <= 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.breakers[t.Playbook]
	if !ok {
		b = &breaker{admitted: map[string]time.Time{}}
		g.breakers[t.Playbook] = b
	}
	return b.admit(g.now(), t, rules)
}

type breaker struct {
	admitted  map[string]time.Time // incident → first admitted
	openUntil time.Time
}

func (b *breaker) admit(now time.Time, t Target, rules Rules) *Refusal {
	if _, ok := b.admitted[t.Incident]; ok {
		return nil
	}
	per := rules.RatePer
	if per <= 0 {
		per = time.Minute
	}
	cooldown := rules.Cooldown
	if cooldown <= 0 {
		cooldown = 10 * per
	}
	if now.Before(b.openUntil) {
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s is open until %s (more than %d incidents in %s)", t.Playbook, b.openUntil.Format(time.RFC3339), rules.RateLimit, per)}
	}
	recent := 0
	for id, at := range b.admitted {
		if now.Sub(at) > per {
			delete(b.admitted, id)
			continue
		}
		recent++
	}
	if recent >= rules.RateLimit {
		b.openUntil = now.Add(cooldown)
		return &Refusal{Reason: fmt.Sprintf("refused: circuit breaker of playbook %s opened: incident %s would be the %dth in %s, the limit is %d; it stays open for %s", t.Playbook, t.Incident, recent+1, per, rules.RateLimit, cooldown)}
	}
	b.admitted[t.Incident] = now
	return nil
}
