package classify

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
)

// clock is a settable time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func compiled(name, severity string, match []playbook.Filter, params step.Params, g guard.Rules) playbook.Compiled {
	if params == nil {
		params = step.Params{"threshold": "40", "dedupWindow": "10m"}
	}
	if g.RateIncidents == 0 {
		g.RateIncidents, g.RatePer = 10, "10m"
	}
	g.ProtectedNamespaces = append(g.ProtectedNamespaces, guard.AlwaysProtected()...)
	return playbook.Compiled{Name: name, Description: name + " happened", Severity: severity, Match: match, Guardrails: g,
		Steps: []playbook.CompiledStep{{Name: Name, Function: Name, Params: params}}}
}

func execOf(comm string) []playbook.Filter {
	return []playbook.Filter{{Exact: map[string]string{"type": events.TypeProcessExec, "comm": comm}}}
}

// options are a test Classifier's: the test's key and clock, learning
// for an hour.
func options(clk *clock, pbs []playbook.Compiled) Options {
	return Options{Bundle: &playbook.Bundle{Playbooks: pbs}, IncidentKey: steptest.Key, Now: clk.now, LearningWindow: time.Hour, Log: zerolog.Nop()}
}

func newClassifier(t *testing.T, store string, clk *clock, pbs ...playbook.Compiled) *Classifier {
	t.Helper()
	opts := options(clk, pbs)
	opts.StorePath = store
	c, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// replicaOf starts a Classifier on a test's store: a restart of the one
// before it, or (PostgreSQL) one more replica beside it.
type replicaOf func(clk *clock, pbs ...playbook.Compiled) *Classifier

// onEachStore runs test on the file store and on PostgreSQL: one decision,
// two stores.
func onEachStore(t *testing.T, test func(t *testing.T, replica replicaOf)) {
	t.Run("file", func(t *testing.T) {
		store := filepath.Join(t.TempDir(), "classify.json")
		test(t, func(clk *clock, pbs ...playbook.Compiled) *Classifier { return newClassifier(t, store, clk, pbs...) })
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := freshDatabase(t)
		test(t, func(clk *clock, pbs ...playbook.Compiled) *Classifier { return pgClassifier(t, dsn, clk, pbs...) })
	})
}

var seq int

// sensorEvent is an event as the sensor builds it.
func sensorEvent(t *testing.T, typ string, ext map[string]string, data any) cloudevents.Event {
	t.Helper()
	seq++
	if ext["node"] == "" {
		ext["node"] = "n1"
	}
	e, err := events.New(events.Spec{Type: typ, Source: "parry://sensor/n1", Key: "k" + string(rune('a'+seq%26)) + time.Now().String(), Extensions: ext, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func exec(t *testing.T, pod, comm, exe string, args ...string) cloudevents.Event {
	return sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": pod, "comm": comm, "exe": exe}, map[string]any{"args": args})
}

// handle runs c as the step runtime does.
func handle(t *testing.T, c *Classifier, e cloudevents.Event) *cloudevents.Event {
	t.Helper()
	r, err := step.Handler(Definition(), c.act, step.Deps{Log: zerolog.Nop()})(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func data(t *testing.T, e *cloudevents.Event) Data {
	t.Helper()
	var d Data
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestOpenJoinAndDedupWindow(t *testing.T) { onEachStore(t, testOpenJoinAndDedupWindow) }

func testOpenJoinAndDedupWindow(t *testing.T, replica replicaOf) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := replica(clk, compiled("pm", "medium", execOf("dpkg"), nil, guard.Rules{}))
	first := exec(t, "pod-a", "dpkg", "/usr/bin/dpkg")
	r := handle(t, c, first)
	if r == nil || r.Type() != events.TypeIncidentOpened {
		t.Fatalf("first event: got %v, want incident.opened", r)
	}
	inc := events.String(*r, events.ExtIncident)
	for _, name := range []string{events.ExtIncident, events.ExtPlaybook, events.ExtSeverity, events.ExtResponse, events.ExtScore, events.ExtDescription} {
		if events.String(*r, name) == "" {
			t.Errorf("incident.opened lacks %s", name)
		}
	}
	if d := data(t, r); len(d.Reasons) < 2 || !strings.Contains(d.Reasons[0], "+40: playbook pm (medium)") {
		t.Errorf("reasons: %q", d.Reasons)
	}
	// Redelivery of the first event: the very same reply.
	if again := handle(t, c, first); again == nil || again.ID() != r.ID() || again.Type() != events.TypeIncidentOpened {
		t.Errorf("redelivered first event: got %v, want the same reply %s", again, r.ID())
	}
	// A burst: joins.
	for range 5 {
		clk.advance(time.Minute)
		j := handle(t, c, exec(t, "pod-a", "dpkg", "/usr/bin/dpkg"))
		if j == nil || j.Type() != events.TypeIncidentJoined || events.String(*j, events.ExtIncident) != inc {
			t.Fatalf("burst event: got %v, want joined to %s", j, inc)
		}
	}
	// Another pod: its own incident.
	if o := handle(t, c, exec(t, "pod-b", "dpkg", "/usr/bin/dpkg")); o == nil || o.Type() != events.TypeIncidentOpened || events.String(*o, events.ExtIncident) == inc {
		t.Errorf("other pod: got %v, want a new incident", o)
	}
	// After the dedup window since the last event: a new incident.
	clk.advance(11 * time.Minute)
	if n := handle(t, c, exec(t, "pod-a", "dpkg", "/usr/bin/dpkg")); n == nil || n.Type() != events.TypeIncidentOpened || events.String(*n, events.ExtIncident) == inc {
		t.Errorf("after the window: got %v, want a new incident", n)
	}
	// No playbook matches: learned, no reply.
	if n := handle(t, c, exec(t, "pod-a", "ls", "/bin/ls")); n != nil {
		t.Errorf("unmatched event got a reply %s", n.Type())
	}
}

func TestBaselineAnomalyPersistsAcrossRestarts(t *testing.T) {
	onEachStore(t, testBaselineAnomalyPersistsAcrossRestarts)
}

func testBaselineAnomalyPersistsAcrossRestarts(t *testing.T, replica replicaOf) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// low severity (20) with threshold 40: only anomalies can open it.
	pb := compiled("curl", "low", execOf("curl"), nil, guard.Rules{})
	c := replica(clk, pb)
	// Learning: curl is part of the workload's normal behaviour.
	r := handle(t, c, exec(t, "pod-a", "curl", "/usr/bin/curl", "curl", "https://api.example.com/"))
	if r == nil || r.Type() != events.TypeIncidentSuppressed {
		t.Fatalf("during learning: got %v, want suppressed", r)
	}
	if d := data(t, r); !strings.Contains(strings.Join(d.Reasons, "\n"), "still learning") || !strings.Contains(strings.Join(d.Reasons, "\n"), "below the threshold 40") {
		t.Errorf("reasons: %q", d.Reasons)
	}
	// Restart after the learning window: the baseline came back from the
	// store.
	clk.advance(2 * time.Hour)
	c = replica(clk, pb)
	if r := handle(t, c, exec(t, "pod-a", "curl", "/usr/bin/curl", "curl", "https://api.example.com/")); r == nil || r.Type() != events.TypeIncidentSuppressed {
		t.Fatalf("known executable after learning: got %v, want suppressed", r)
	}
	// A new executable and a high-entropy host: 20 + 15 + 15 = 50 ≥ 40.
	r = handle(t, c, exec(t, "pod-a", "curl", "/tmp/curl", "curl", "stratum+tcp://x9qk2m7vzp4lw8.pool.example.com:3333"))
	if r == nil || r.Type() != events.TypeIncidentOpened {
		t.Fatalf("anomalous event: got %v, want opened", r)
	}
	d := data(t, r)
	joined := strings.Join(d.Reasons, "\n")
	if d.Score != 50 || !strings.Contains(joined, "executable /tmp/curl is not in workload pod/pod-a's baseline") || !strings.Contains(joined, "high-entropy") {
		t.Errorf("score %d, reasons:\n%s", d.Score, joined)
	}
	// Restart again: the open incident is remembered, the burst joins.
	c = replica(clk, pb)
	if j := handle(t, c, exec(t, "pod-a", "curl", "/tmp/curl", "curl", "stratum+tcp://x9qk2m7vzp4lw8.pool.example.com:3333")); j == nil || j.Type() != events.TypeIncidentJoined {
		t.Errorf("after restart: got %v, want joined", j)
	}
}

func TestGuardrails(t *testing.T) { onEachStore(t, testGuardrails) }

func testGuardrails(t *testing.T, replica replicaOf) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := replica(clk,
		compiled("limited", "high", execOf("nc"), nil, guard.Rules{RateIncidents: 2, RatePer: "1m"}),
		compiled("dry", "high", execOf("dd"), nil, guard.Rules{DryRun: true, ProtectedNamespaces: []string{"payments"}}),
		compiled("healthy", "high", execOf("hh"), nil, guard.Rules{RequireHealthySensor: true}),
	)
	response := func(r *cloudevents.Event) string {
		t.Helper()
		if r == nil || r.Type() != events.TypeIncidentOpened {
			t.Fatalf("got %v, want incident.opened", r)
		}
		return events.String(*r, events.ExtResponse)
	}
	for i, want := range []string{"act", "act", "escalate", "escalate"} {
		if got := response(handle(t, c, exec(t, "pod-"+string(rune('a'+i)), "nc", "/bin/nc"))); got != want {
			t.Errorf("incident %d of limited: response %s, want %s", i+1, got, want)
		}
	}
	clk.advance(2 * time.Minute)
	if got := response(handle(t, c, exec(t, "pod-z", "nc", "/bin/nc"))); got != "act" {
		t.Errorf("after the breaker's window: %s, want act", got)
	}
	if got := response(handle(t, c, exec(t, "pod-a", "dd", "/bin/dd"))); got != "dryrun" {
		t.Errorf("dryRun playbook: %s", got)
	}
	for _, ns := range []string{"kube-system", "parry-system", "payments"} {
		e := sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": "p-" + ns, "podns": ns, "comm": "dd", "exe": "/bin/dd"}, nil)
		if got := response(handle(t, c, e)); got != "escalate" {
			t.Errorf("protected namespace %s: %s, want escalate", ns, got)
		}
	}
	if got := response(handle(t, c, exec(t, "pod-h1", "hh", "/bin/hh"))); got != "act" {
		t.Errorf("healthy sensor: %s", got)
	}
	handle(t, c, sensorEvent(t, events.TypeSensorHealth, map[string]string{"severity": "warning"}, nil))
	if got := response(handle(t, c, exec(t, "pod-h2", "hh", "/bin/hh"))); got != "escalate" {
		t.Errorf("after sensor loss: %s, want escalate", got)
	}
	clk.advance(2 * time.Minute)
	if got := response(handle(t, c, exec(t, "pod-h3", "hh", "/bin/hh"))); got != "act" {
		t.Errorf("loss long ago: %s, want act", got)
	}
}

func TestMostSevereMatchWins(t *testing.T) {
	clk := &clock{t: time.Now()}
	c := newClassifier(t, "", clk,
		compiled("a-medium", "medium", execOf("sh"), nil, guard.Rules{}),
		compiled("z-critical", "critical", execOf("sh"), nil, guard.Rules{}),
	)
	r := handle(t, c, exec(t, "p", "sh", "/bin/sh"))
	if r == nil || events.String(*r, events.ExtPlaybook) != "z-critical" || events.String(*r, events.ExtSeverity) != "critical" {
		t.Fatalf("got %v", r)
	}
}

func TestEntropy(t *testing.T) {
	if h := hostEntropy("api.github.com"); h >= entropyThreshold {
		t.Errorf("api.github.com: %.2f", h)
	}
	if h := hostEntropy("x9qk2m7vzp4lw8.pool.example.com"); h < entropyThreshold {
		t.Errorf("generated name: %.2f", h)
	}
	got := hostNames([]string{"curl", "-o", "/tmp/x", "https://Evil.Example.com:8443/a", "--host=db.internal.example.org", "1.2.3.4:80"})
	if strings.Join(got, ",") != "evil.example.com,db.internal.example.org" {
		t.Errorf("hostNames: %v", got)
	}
}

func TestSpecValidates(t *testing.T) {
	if _, err := Definition().Spec.Validate(map[string]any{"threshold": 50, "dedupWindow": "1m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Definition().Spec.Validate(map[string]any{"threshold": "x"}); err == nil {
		t.Fatal("bad threshold accepted")
	}
}

func TestWorkloadsAreBounded(t *testing.T) {
	st := &state{Workloads: map[string]*baseline{}}
	base := time.Now()
	for i := range 5 {
		st.Workloads[string(rune('a'+i))] = &baseline{Since: base.Add(time.Duration(i) * time.Second)}
	}
	st.evictWorkloads(3)
	if len(st.Workloads) != 3 || st.Workloads["a"] != nil || st.Workloads["b"] != nil || st.Workloads["e"] == nil {
		t.Fatalf("kept %v", st.Workloads)
	}
}

// Many incidents of one pod count once against the limit: eleven
// detections of one pod, each past the dedup window (so each opens an
// incident), leave the breaker closed, and the next pod's detection acts.
// And the incident classify opens is sealed to its pod and playbook.
func TestOnePodCannotTripTheBreaker(t *testing.T) { onEachStore(t, testOnePodCannotTripTheBreaker) }

func testOnePodCannotTripTheBreaker(t *testing.T, replica replicaOf) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := replica(clk, compiled("limited", "high", execOf("nc"), step.Params{"threshold": "40", "dedupWindow": "1s"}, guard.Rules{RateIncidents: 10, RatePer: "1h"}))
	for i := range 11 {
		r := handle(t, c, exec(t, "pod-noisy", "nc", "/bin/nc"))
		if r == nil || r.Type() != events.TypeIncidentOpened || events.String(*r, events.ExtResponse) != "act" {
			t.Fatalf("detection %d of one pod: %v", i+1, r)
		}
		clk.advance(2 * time.Second)
	}
	r := handle(t, c, exec(t, "pod-real", "nc", "/bin/nc"))
	if r == nil || events.String(*r, events.ExtResponse) != "act" {
		t.Fatalf("the next pod's detection: %v, want act", r)
	}
	want := step.Seal(steptest.Key, events.String(*r, events.ExtIncident), "limited", "pod-real", "", "")
	if got := events.String(*r, events.ExtIncidentSeal); got != want {
		t.Fatalf("incidentseal %q, want the seal of the incident, playbook and pod %q", got, want)
	}
}
