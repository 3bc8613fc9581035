package stepmain

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/metrics/metricstest"
	"parry.dev/parry/internal/step"
)

// A step's main serves its metrics on $PORT beside its events: one event
// handled moves its requests counter and latency histogram by one.
func TestStepServesMetrics(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("PARRY_CALLERS", "any")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	t.Setenv("PORT", fmt.Sprint(port))
	ctx, cancel := context.WithCancel(context.Background())
	def := step.Definition{Spec: step.Spec{Name: "counter"}, New: func(context.Context, step.Deps) (step.Action, error) {
		return func(context.Context, *step.Request) (any, error) { return map[string]int{"n": 1}, nil }, nil
	}}
	stopped := make(chan error, 1)
	go func() { stopped <- run(ctx, def, zerolog.Nop()) }()
	t.Cleanup(func() { cancel(); <-stopped })

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the step did not serve: %v", err)
		}
	}
	before := metricstest.Get(t, base+"/metrics")
	e, err := events.New(events.Spec{Type: "dev.parry.test.v1", Source: "parry://test", Key: "1"})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, base+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("event: %s, want 200 with the done reply", resp.Status)
	}
	after := metricstest.Get(t, base+"/metrics")
	for name, labels := range map[string]map[string]string{
		"parry_step_requests_total":   {"step": "counter", "outcome": "done"},
		"parry_step_duration_seconds": {"step": "counter"},
	} {
		if got := after.Value(name, labels) - before.Value(name, labels); got != 1 {
			t.Errorf("%s%v moved by %v, want 1\n%s", name, labels, got, after.Text)
		}
	}
	if _, ok := after.Families["go_goroutines"]; !ok {
		t.Error("the step's /metrics lacks the Go runtime's metrics")
	}
}
