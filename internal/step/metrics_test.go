package step_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/httpserver/servertest"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/metrics/metricstest"
	"parry.dev/parry/internal/step"
)

// A step served as in a cluster counts each event it handles by outcome,
// with a latency sample, and the runtime's refusals by reason: scraped
// from the step's own /metrics, which answers without a caller's token
// while events without one are refused (and not counted).
func TestStepMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	steps := metrics.NewSteps(reg)
	pbs := playbooks{
		"miner":   {},
		"failing": {},
		"erring":  {},
		"extra":   {Guard: guard.Rules{ProtectedNamespaces: []string{"payments"}}},
	}
	act := func(_ context.Context, r *step.Request) (any, error) {
		switch r.Playbook {
		case "failing":
			return nil, step.Fail("the action gave up")
		case "erring":
			return nil, errors.New("try again")
		}
		return map[string]string{"ok": "yes"}, nil
	}
	isolate := build(t, isolateLike, act, step.Deps{Playbooks: pbs, IncidentKey: testKey, Metrics: steps, Log: zerolog.Nop()})
	classify := build(t, step.Spec{Name: "classify", Replies: true}, func(context.Context, *step.Request) (any, error) {
		return step.Reply{Type: events.TypeIncidentOpened, Key: "miner",
			Extensions: map[string]string{events.ExtPlaybook: "miner", events.ExtResponse: events.ResponseAct}}, nil
	}, step.Deps{Metrics: steps, Log: zerolog.Nop()})

	file, toks := tokenFile(t, "system:serviceaccount:parry-system:trigger")
	callers := &step.Callers{Authn: file, Allow: func(auth.Identity) bool { return true }, Who: "the test"}
	isolateURL := serveStep(t, isolate, callers, metrics.Handler(reg))
	classifyURL := serveStep(t, classify, nil, nil)
	scrape := isolateURL + "/metrics"
	token := toks["system:serviceaccount:parry-system:trigger"]

	before := metricstest.Get(t, scrape)
	tampered := incident(t, "shop", "miner")
	tampered.SetExtension(events.ExtPodName, "another-pod")
	for _, c := range []struct {
		e     cloudevents.Event
		token string
		want  int
	}{
		{incident(t, "shop", "miner"), "", http.StatusUnauthorized},
		{incident(t, "shop", "miner"), token, http.StatusOK},
		{incident(t, "shop", "failing"), token, http.StatusOK},
		{incident(t, "shop", "erring"), token, http.StatusInternalServerError},
		{tampered, token, http.StatusOK},
		{incident(t, "payments", "extra"), token, http.StatusOK},
	} {
		if got := deliver(t, isolateURL, c.token, c.e); got != c.want {
			t.Fatalf("event of playbook %s (token %t): %d, want %d", events.String(c.e, events.ExtPlaybook), c.token != "", got, c.want)
		}
	}
	if got := deliver(t, classifyURL, "", newSensorEvent(t)); got != http.StatusOK {
		t.Fatalf("classify: %d, want 200", got)
	}
	after := metricstest.Get(t, scrape)
	req := func(step, outcome string) map[string]string {
		return map[string]string{"step": step, "outcome": outcome}
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"parry_step_requests_total", req("isolate", metrics.StepDone), 1}, // not the one without a token
		{"parry_step_requests_total", req("isolate", metrics.StepFailed), 1},
		{"parry_step_requests_total", req("isolate", metrics.StepError), 1},
		{"parry_step_requests_total", req("isolate", metrics.StepRefused), 2},
		{"parry_step_duration_seconds", map[string]string{"step": "isolate"}, 5},
		{"parry_step_refusals_total", map[string]string{"step": "isolate", "reason": metrics.BadSeal}, 1},
		{"parry_step_refusals_total", map[string]string{"step": "isolate", "reason": metrics.Guardrail}, 1},
		{"parry_step_requests_total", req("classify", metrics.StepDone), 1},
		{"parry_incidents_opened_total", map[string]string{"playbook": "miner", "response": events.ResponseAct}, 1},
	} {
		if got := after.Value(c.name, c.labels) - before.Value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, leak := range []string{"another-pod", "web-1", "uid-1", "inc-1", "payments"} {
		if strings.Contains(after.Text, `"`+leak+`"`) {
			t.Errorf("the scrape carries %q from an event as a label value", leak)
		}
	}
	// A step served without a metrics handler has no /metrics.
	resp, err := http.Get(classifyURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("GET /metrics of a server without metrics: %s, want an error", resp.Status)
	}
}

func build(t *testing.T, spec step.Spec, act step.Action, d step.Deps) func(context.Context, cloudevents.Event) (*cloudevents.Event, error) {
	t.Helper()
	h, err := step.Build(t.Context(), step.Definition{Spec: spec, New: func(context.Context, step.Deps) (step.Action, error) { return act, nil }}, d)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func tokenFile(t *testing.T, users ...string) (*auth.TokenFile, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	toks, err := auth.EnsureTokenFile(path, users...)
	if err != nil {
		t.Fatal(err)
	}
	file, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return file, toks
}

func serveStep(t *testing.T, h func(context.Context, cloudevents.Event) (*cloudevents.Event, error), c *step.Callers, m http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := step.NewServer(h, c, m, zerolog.Nop(), servertest.Short)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func deliver(t *testing.T, url, token string, e cloudevents.Event) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func newSensorEvent(t *testing.T) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: "dev.parry.sensor.exec.v1", Source: "parry://sensor/node-1", Key: "1"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}
