package broker_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/metrics/metricstest"
)

// The broker's counters move by one per event, scraped over HTTP and
// parsed: an accepted event and its delivery (done, with a latency
// sample), the same event again (duplicate), no token and a forged one
// (unauthenticated), a type no EventPolicy allows (forbidden), a stale
// event, and a delivery that fails into the dead-letter sink. Ids, sources
// and subjects the sender chose never become label values.
func TestMetricsCountEventsAndDeliveries(t *testing.T) {
	reject := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "bad", http.StatusBadRequest)
	}))
	defer reject.Close()
	file, toks := tokens(t, sensorUser)
	rec, dls := newRecorder(), newRecorder()
	reg := prometheus.NewRegistry()
	h := start(t, fmt.Sprintf(`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: ok, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: dev.parry.sensor.ok}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: rec}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: doomed, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: dev.parry.sensor.bad}}]
  subscriber: {uri: %q}
  delivery:
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dls}}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: sensor, namespace: parry-system}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: parry}}]
  from: [{sub: "%s"}]
  filters: [{prefix: {type: dev.parry.sensor.}}]
`, reject.URL, sensorUser), map[string]events.Handler{"rec": rec.handle, "dls": dls.handle}, func(o *broker.Options) {
		o.Insecure = false
		o.Authenticators = map[string]auth.Authenticator{"parry-system/parry": file}
		o.Metrics = metrics.NewBroker(reg)
	})
	url := scrapeURL(t, reg)
	token := toks[sensorUser]

	const (
		events   = "parry_broker_events_received_total"
		delivery = "parry_broker_deliveries_total"
		latency  = "parry_broker_delivery_duration_seconds"
	)
	accepted := map[string]string{"outcome": metrics.Accepted}
	refused := func(reason string) map[string]string {
		return map[string]string{"outcome": metrics.Refused, "reason": reason}
	}
	before := metricstest.Get(t, url)
	// Every outcome exists at 0 before the first event (positive control
	// for the scrape: the families are there).
	for _, r := range []string{metrics.Unauthenticated, metrics.Forbidden, metrics.Stale, metrics.TooLarge, metrics.RateLimited} {
		if _, ok := before.Families[events]; !ok || !strings.Contains(before.Text, `reason="`+r+`"`) {
			t.Fatalf("refusal reason %s is not exported before any event:\n%s", r, before.Text)
		}
	}

	hostile := "attacker-id-" + strings.Repeat("x", 8)
	ok := newEvent(hostile, "dev.parry.sensor.ok", map[string]any{"podname": "victim-pod"})
	ok.SetSource("attacker-source")
	if code, _ := postAs(t, h.url, token, ok); code != http.StatusAccepted {
		t.Fatalf("event with the sensor's token: %d, want 202", code)
	}
	rec.wait(t, 1)
	if code, _ := postAs(t, h.url, token, ok); code != http.StatusAccepted {
		t.Fatalf("the same event again: %d, want 202", code)
	}
	if code, _ := postAs(t, h.url, "", newEvent("n1", "dev.parry.sensor.ok", nil)); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", code)
	}
	if code, _ := postAs(t, h.url, token+"x", newEvent("n2", "dev.parry.sensor.ok", nil)); code != http.StatusUnauthorized {
		t.Fatalf("forged token: %d, want 401", code)
	}
	if code, _ := postAs(t, h.url, token, newEvent("n3", "dev.parry.step.isolate.done.v1", nil)); code != http.StatusForbidden {
		t.Fatalf("a type no policy allows: %d, want 403", code)
	}
	old := newEvent("n4", "dev.parry.sensor.ok", nil)
	old.SetTime(time.Now().Add(-time.Hour))
	if code, _ := postAs(t, h.url, token, old); code != http.StatusBadRequest {
		t.Fatalf("an hour-old event: %d, want 400", code)
	}
	if code, _ := postAs(t, h.url, token, newEvent("n5", "dev.parry.sensor.bad", nil)); code != http.StatusAccepted {
		t.Fatalf("event for the doomed Trigger: %d, want 202", code)
	}
	dls.wait(t, 1)

	var after metricstest.Scrape
	eventually(t, func() bool {
		after = metricstest.Get(t, url)
		return after.Value(delivery, map[string]string{"trigger": "parry-system/doomed", "outcome": metrics.Done}) == 1
	}, func() string { return after.Text })
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{events, accepted, 2}, // ok and the doomed one
		{events, map[string]string{"outcome": metrics.Duplicate}, 1},
		{events, refused(metrics.Unauthenticated), 2},
		{events, refused(metrics.Forbidden), 1},
		{events, refused(metrics.Stale), 1},
		{events, refused(metrics.RateLimited), 0},
		{delivery, map[string]string{"trigger": "parry-system/ok", "outcome": metrics.Done}, 1},
		{latency, map[string]string{"trigger": "parry-system/ok"}, 1},
		// 400 is not retried: the subscriber's one attempt is given up
		// into the dead-letter sink, whose delivery is done.
		{delivery, map[string]string{"trigger": "parry-system/doomed", "outcome": metrics.DeadLettered}, 1},
		{delivery, map[string]string{"trigger": "parry-system/doomed", "outcome": metrics.Retried}, 0},
		{latency, map[string]string{"trigger": "parry-system/doomed"}, 2},
	} {
		if got := after.Value(c.name, c.labels) - before.Value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, leak := range []string{hostile, "attacker-source", "victim-pod", "n1", sensorUser} {
		if strings.Contains(after.Text, `"`+leak+`"`) {
			t.Errorf("the scrape carries %q, which the sender chose, as a label value", leak)
		}
	}
}

func scrapeURL(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(metrics.Handler(reg))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}
