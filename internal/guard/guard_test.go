package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"
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
	} {
		r := g.Admit(c.target, c.rules)
		if r == nil || !strings.Contains(r.Reason, c.want) {
			t.Errorf("%+v: got %v, want %q", c.target, r, c.want)
		}
	}
	if r := g.Admit(Target{Namespace: "default", Playbook: "p", Pod: "uid-1"}, Rules{}); r != nil {
		t.Fatalf("ordinary pod refused: %v", r)
	}
}

func TestBreakerTripsAndRecovers(t *testing.T) {
	g := New()
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	rules := Rules{RateIncidents: 3, RatePer: "1s"}
	admit := func(i int) *Refusal {
		return g.Admit(Target{Namespace: "default", Playbook: "miner", Pod: fmt.Sprint("uid-", i)}, rules)
	}
	for i := range 3 {
		if r := admit(i); r != nil {
			t.Fatalf("pod %d refused: %v", i, r)
		}
	}
	if r := admit(0); r != nil {
		t.Fatalf("a pod admitted before was refused: %v", r)
	}
	if r := admit(3); r == nil || !strings.Contains(r.Reason, "circuit breaker of playbook miner opened") {
		t.Fatalf("fourth pod in a second: %v", r)
	}
	// The cooldown is one rate window.
	now = now.Add(500 * time.Millisecond)
	if r := admit(4); r == nil || !strings.Contains(r.Reason, "is open until") {
		t.Fatalf("breaker closed too early: %v", r)
	}
	if r := g.Admit(Target{Namespace: "default", Playbook: "other", Pod: "x"}, rules); r != nil {
		t.Fatalf("another playbook's breaker tripped too: %v", r)
	}
	now = now.Add(time.Second)
	if r := admit(5); r != nil {
		t.Fatalf("breaker did not close after the cooldown: %v", r)
	}
}

// Incident ids are not what the limit counts: one incident id reused for
// many pods trips it like many incidents would, and many incident ids for
// one pod count once.
func TestBreakerCountsPodsNotIncidents(t *testing.T) {
	rules := Rules{RateIncidents: 10, RatePer: "1h"}
	var b Breaker
	now := time.Unix(1000, 0)
	admitted := 0
	for i := range 20 {
		if b.Admit(now, "miner", fmt.Sprint("uid-", i), rules) == nil {
			admitted++
		}
	}
	if admitted != 10 {
		t.Fatalf("20 pods admitted %d times, want the limit of 10", admitted)
	}
	var one Breaker
	for range 50 {
		if r := one.Admit(now, "miner", "uid-same", rules); r != nil {
			t.Fatalf("one pod tripped the breaker: %v", r)
		}
	}
}
