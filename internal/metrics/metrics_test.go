package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/metrics/metricstest"
)

// everything registers every collector parry has on one registry, as
// parry run does, with a sample in each vector so that every series is
// gathered.
func everything(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := metrics.NewRegistry()
	b := metrics.NewBroker(reg)
	s := metrics.NewSteps(reg)
	metrics.RegisterPruned(reg, func() (int64, int64) { return 3, 4096 })
	b.Event(metrics.Accepted, "")
	b.Delivery("parry-system/isolate", metrics.Done, 2*time.Millisecond)
	s.Request("isolate", metrics.StepDone, time.Second)
	s.Refusal("isolate", metrics.BadSeal)
	s.IncidentOpened("crypto-miner", "act")
	return reg
}

// Every metric parry registers passes Prometheus's own linter (promlint:
// snake_case, _total on counters, base units such as _seconds, help text).
func TestNamesFollowPrometheusConventions(t *testing.T) {
	reg := everything(t)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	// Positive control: the linter does object to a badly named counter.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "parry_brokerEventsMs", Help: "x"}))
	if problems, err := testutil.GatherAndLint(bad); err != nil || len(problems) == 0 {
		t.Fatalf("the linter passed parry_brokerEventsMs (%v): the lint test cannot fail", err)
	}
}

// parry's own metrics all carry the parry_ prefix, and those the docs list
// are the ones registered: docs/metrics.md stays true.
func TestNamesArePrefixedAndDocumented(t *testing.T) {
	reg := everything(t)
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	s := metricstest.Get(t, srv.URL)
	parry := 0
	for name := range s.Families {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		parry++
		if !strings.HasPrefix(name, "parry_") {
			t.Errorf("metric %s lacks the parry_ prefix", name)
		}
	}
	if parry != 9 {
		t.Errorf("%d parry metrics gathered, want 9 (update this test and docs/metrics.md together)", parry)
	}
	if got := s.Value("parry_journal_pruned_bytes_total", nil); got != 4096 {
		t.Errorf("parry_journal_pruned_bytes_total = %v, want the pruner's 4096", got)
	}
}
