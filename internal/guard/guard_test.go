package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/internal/labels"
)

func TestProtectedAndSelf(t *testing.T) {
	g := New()
	for _, c := range []struct {
		target Target
		rules  Rules
		want   string
	}{
		{Target{Namespace: "kube-system"}, Rules{}, "namespace kube-system is protected"},
		{Target{Namespace: "parry-system"}, Rules{}, "namespace parry-system is protected"},
		{Target{Namespace: "parry-sensor"}, Rules{}, "namespace parry-sensor is protected"},
		{Target{Namespace: "payments"}, Rules{ProtectedNamespaces: []string{"payments"}}, "namespace payments is protected"},
		{Target{Namespace: "default", PodLabels: map[string]string{labels.PartOf: labels.PartOfParry}}, Rules{}, "part of parry"},
	} {
		r := g.Admit(c.target, c.rules)
		if r == nil || !strings.Contains(r.Reason, c.want) {
			t.Errorf("%+v: got %v, want %q", c.target, r, c.want)
		}
	}
	if r := g.Admit(Target{Namespace: "default", Playbook: "p", Incident: "i"}, Rules{}); r != nil {
		t.Fatalf("ordinary pod refused: %v", r)
	}
}

func TestBreakerTripsAndRecovers(t *testing.T) {
	g := New()
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	rules := Rules{RateIncidents: 3, RatePer: "1s"}
	admit := func(i int) *Refusal {
		return g.Admit(Target{Namespace: "default", Playbook: "miner", Incident: fmt.Sprint("inc-", i)}, rules)
	}
	for i := range 3 {
		if r := admit(i); r != nil {
			t.Fatalf("incident %d refused: %v", i, r)
		}
	}
	if r := admit(0); r != nil {
		t.Fatalf("a redelivery of an admitted incident was refused: %v", r)
	}
	if r := admit(3); r == nil || !strings.Contains(r.Reason, "circuit breaker of playbook miner opened") {
		t.Fatalf("fourth incident in a second: %v", r)
	}
	// The cooldown is one rate window.
	now = now.Add(500 * time.Millisecond)
	if r := admit(4); r == nil || !strings.Contains(r.Reason, "is open until") {
		t.Fatalf("breaker closed too early: %v", r)
	}
	if r := g.Admit(Target{Namespace: "default", Playbook: "other", Incident: "x"}, rules); r != nil {
		t.Fatalf("another playbook's breaker tripped too: %v", r)
	}
	now = now.Add(time.Second)
	if r := admit(5); r != nil {
		t.Fatalf("breaker did not close after the cooldown: %v", r)
	}
}
