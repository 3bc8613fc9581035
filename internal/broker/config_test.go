package broker_test

import (
	"context"
	"testing"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/manifest"
)

// TestShippedPoliciesHaveNoHole checks config/ as shipped: every type a
// parry component sends is allowed from the identity it is sent with (or
// the e2e chains would stop), and nothing else is: the sensor sends only
// sensor events, each step (through the Triggers that deliver to it) only
// its own types, the dead-letter sink only failed events, and a sender no
// policy names nothing.
func TestShippedPoliciesHaveNoHole(t *testing.T) {
	ctx := context.Background()
	set, err := manifest.LoadDir(ctx, "../../config")
	if err != nil {
		t.Fatal(err)
	}
	if !set.Features.IsOIDCAuthentication() || !set.Features.IsAuthorizationDefaultModeDenyAll() {
		t.Fatalf("config/ does not turn OIDC sender authentication on with deny-all: %v", set.Features)
	}
	const key = "parry-system/parry"
	decide := func(sender, typ string) bool {
		t.Helper()
		ok, _, err := broker.Decide(ctx, set, key, sender, newEvent("x", typ, nil))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	sensorTypes := []string{events.TypeProcessExec, events.TypeProcessExit, events.TypeNetworkConnect, events.TypeFileOpen, events.TypePrivilege, events.TypeSensorHealth}
	incidentTypes := []string{events.TypeIncidentOpened, events.TypeIncidentJoined, events.TypeIncidentSuppressed}
	steps := map[string]bool{}
	var journalTriggers []manifest.Trigger
	for _, tr := range set.Triggers {
		if tr.IsClusterOnly() {
			journalTriggers = append(journalTriggers, tr)
			continue
		}
		steps[tr.Spec.Subscriber.Ref.Name] = true
	}
	deadLetter := "system:serviceaccount:parry-system:parry-failed"
	sensor := "system:serviceaccount:parry-sensor:parry-sensor"
	for _, typ := range sensorTypes {
		if !decide(sensor, typ) {
			t.Errorf("the sensor may not send %s", typ)
		}
	}
	for st := range steps {
		for _, typ := range []string{events.StepDone(st), events.StepFailed(st)} {
			if decide(sensor, typ) {
				t.Errorf("the sensor may send %s", typ)
			}
		}
		if !decide(deadLetter, events.StepFailed(st)) || decide(deadLetter, events.StepDone(st)) {
			t.Errorf("the dead-letter sink: %s allowed %v, %s allowed %v (want true, false)",
				events.StepFailed(st), decide(deadLetter, events.StepFailed(st)), events.StepDone(st), decide(deadLetter, events.StepDone(st)))
		}
	}
	if decide(deadLetter, events.TypeProcessExec) || decide(deadLetter, events.TypeIncidentOpened) {
		t.Error("the dead-letter sink may send more than failed events")
	}
	// The journal service's catch-all Trigger delivers every event and
	// sends none: its identity may send nothing.
	if len(journalTriggers) != 1 {
		t.Errorf("%d cluster-only Triggers in config/, want the journal service's one", len(journalTriggers))
	}
	for _, tr := range journalTriggers {
		from := broker.TriggerIdentity(tr.Namespace, tr.Name)
		for _, typ := range append(append(sensorTypes, incidentTypes...), events.StepDone("isolate"), events.StepFailed("isolate"), events.TypeIncidentClosed) {
			if decide(from, typ) {
				t.Errorf("the journal's Trigger %s may send %s", tr.Key(), typ)
			}
		}
	}
	for _, tr := range set.Triggers {
		if tr.IsClusterOnly() {
			continue
		}
		st, from := tr.Spec.Subscriber.Ref.Name, broker.TriggerIdentity(tr.Namespace, tr.Name)
		own := []string{events.StepDone(st), events.StepFailed(st)}
		if st == "classify" {
			own = append([]string{events.StepFailed(st)}, incidentTypes...)
		}
		for _, typ := range own {
			if !decide(from, typ) {
				t.Errorf("Trigger %s (step %s) may not send its step's %s", tr.Key(), st, typ)
			}
		}
		for other := range steps {
			if other != st && decide(from, events.StepDone(other)) {
				t.Errorf("Trigger %s (step %s) may send %s", tr.Key(), st, events.StepDone(other))
			}
		}
		if decide(from, events.TypeProcessExec) || (st != "classify" && decide(from, events.TypeIncidentOpened)) {
			t.Errorf("Trigger %s (step %s) may send sensor or incident events", tr.Key(), st)
		}
	}
	// The Tetragon ingester sends parry's exec events and nothing else.
	tetragon := "system:serviceaccount:parry-sensor:parry-ingest-tetragon"
	if !decide(tetragon, events.TypeProcessExec) || decide(tetragon, events.TypeProcessExit) || decide(tetragon, events.TypeIncidentOpened) || decide(tetragon, events.StepDone("isolate")) {
		t.Errorf("the Tetragon ingester: exec allowed %v, exit %v, incident %v, a step's done %v (want only exec)", decide(tetragon, events.TypeProcessExec),
			decide(tetragon, events.TypeProcessExit), decide(tetragon, events.TypeIncidentOpened), decide(tetragon, events.StepDone("isolate")))
	}
	if decide("system:serviceaccount:parry-system:default", events.TypeProcessExec) {
		t.Error("a ServiceAccount no policy names may send")
	}
}
