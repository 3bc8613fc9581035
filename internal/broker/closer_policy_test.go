package broker_test

import (
	"context"
	"testing"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/stack"
)

// TestShippedPoliciesLetOnlyTheCloserClose checks config/ as shipped for
// incident.closed, which records who lifted an incident's blocks: the
// closer's ServiceAccount and parry run's operator may send it and nothing
// else, and no step (classify included, which sends the other incident
// types) may forge it.
func TestShippedPoliciesLetOnlyTheCloserClose(t *testing.T) {
	ctx := context.Background()
	set, err := manifest.LoadDir(ctx, "../../config")
	if err != nil {
		t.Fatal(err)
	}
	decide := func(sender, typ string) bool {
		t.Helper()
		ok, _, err := broker.Decide(ctx, set, stack.DefaultBroker, sender, newEvent("x", typ, nil))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, closer := range []string{"system:serviceaccount:parry-system:parry-incident-closer", stack.Operator} {
		if !decide(closer, events.TypeIncidentClosed) {
			t.Errorf("%s may not send %s", closer, events.TypeIncidentClosed)
		}
		for _, typ := range []string{events.TypeIncidentOpened, events.TypeProcessExec, events.StepDone("isolate"), events.StepFailed("isolate")} {
			if decide(closer, typ) {
				t.Errorf("%s may send %s", closer, typ)
			}
		}
	}
	classified := 0
	for _, tr := range set.Triggers {
		from := broker.TriggerIdentity(tr.Namespace, tr.Name)
		if decide(from, events.TypeIncidentClosed) {
			t.Errorf("Trigger %s (step %s) may send %s", tr.Key(), tr.Spec.Subscriber.Ref.Name, events.TypeIncidentClosed)
		}
		if tr.Spec.Subscriber.Ref.Name == "classify" && decide(from, events.TypeIncidentOpened) {
			classified++ // the positive control: classify still opens incidents
		}
	}
	if classified == 0 {
		t.Error("no classify Trigger may send incident.opened: the policies lost classify's")
	}
}
