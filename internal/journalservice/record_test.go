package journalservice_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/journalservice"
	"parry.dev/parry/internal/journalservice/journaltest"
	"parry.dev/parry/internal/playbook"
)

func sensorEvent(t testing.TB, key string) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: key, Time: time.Now(),
		Extensions: map[string]string{events.ExtPodUID: "uid-1", events.ExtDestPort: "4444"}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Knative's broker filter delivers in binary mode; other senders may use
// structured mode. Both are recorded, with their data and extensions, and
// answered 202 with no body: a body would be a reply event for the Broker.
func TestRecordsBinaryAndStructuredDeliveries(t *testing.T) {
	f := start(t)
	for _, structured := range []bool{false, true} {
		e := sensorEvent(t, fmt.Sprintf("mode-%v", structured))
		code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, e, structured)
		if err != nil || code != http.StatusAccepted || body != "" {
			t.Fatalf("structured=%v: %d %q %v, want 202 and no body", structured, code, body, err)
		}
		got, err := f.store.Event(t.Context(), e.ID())
		if err != nil {
			t.Fatalf("structured=%v: not recorded: %v", structured, err)
		}
		if got.Source != e.Source() || got.Type != e.Type() || events.String(got.Event, events.ExtDestPort) != "4444" ||
			got.TraceID != events.TraceID(e) || got.Broker != "parry-system/parry" || got.Sender != "" {
			t.Errorf("structured=%v: recorded %+v", structured, got)
		}
	}
}

// At-least-once redelivery records once: the same event delivered again,
// and many times at once, is one row; every delivery is answered 202.
func TestRedeliveriesAreRecordedOnce(t *testing.T) {
	f := start(t)
	e := sensorEvent(t, "again")
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for i := range 20 {
		wg.Go(func() {
			code, _, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, e, i%2 == 0)
			if err != nil {
				t.Error(err)
			}
			codes <- code
		})
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusAccepted {
			t.Errorf("a redelivery answered %d, want 202", c)
		}
	}
	if all, once := f.count(t, e.ID()); all != 1 || once != 1 {
		t.Fatalf("%d rows, %d of the event; want it once", all, once)
	}
	_, metrics, _ := get(t, f.url+"/metrics", "") // refused: the control that metrics need a grant
	if strings.Contains(metrics, "parry_journal_events_total") {
		t.Fatal("/metrics answered without a token")
	}
}

// Only the journal's own Trigger delivers: no token, a token for another
// audience, a step's Trigger, a workload of parry's namespace and a Trigger
// of another namespace are refused before anything is recorded.
func TestOnlyTheJournalsTriggerDelivers(t *testing.T) {
	f := start(t)
	elsewhere := uniqueNamespace("elsewhere")
	for name, c := range map[string]struct {
		token string
		code  int
		want  string
	}{
		"no token":         {"", http.StatusUnauthorized, "no bearer token"},
		"not a token":      {"not-a-token", http.StatusUnauthorized, "token rejected"},
		"the read API's":   {journaltest.Token(t, f.cs, playbook.Namespace, broker.TriggerServiceAccount(journalservice.Name), journalservice.Audience), http.StatusUnauthorized, "token rejected"},
		"a step's Trigger": {journaltest.Token(t, f.cs, playbook.Namespace, broker.TriggerServiceAccount("crypto-miner-isolate"), journalservice.DeliveryAudience), http.StatusForbidden, "may not deliver"},
		"a workload":       {journaltest.Token(t, f.cs, playbook.Namespace, "web", journalservice.DeliveryAudience), http.StatusForbidden, "may not deliver"},
		"same name, another namespace": {journaltest.Token(t, f.cs, elsewhere, broker.TriggerServiceAccount(journalservice.Name), journalservice.DeliveryAudience),
			http.StatusForbidden, "system:serviceaccount:" + elsewhere},
	} {
		e := sensorEvent(t, "refused-"+name)
		code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, c.token, e, false)
		if err != nil || code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s %v, want %d with %q", name, code, body, err, c.code, c.want)
		}
	}
	if all, _ := f.count(t, ""); all != 0 {
		t.Fatalf("%d events recorded from refused callers", all)
	}
	// The positive control: the Trigger's own delivery is recorded.
	e := sensorEvent(t, "accepted")
	if code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, e, false); code != http.StatusAccepted {
		t.Fatalf("the Trigger's delivery: %d %s %v", code, body, err)
	}
	if all, once := f.count(t, e.ID()); all != 1 || once != 1 {
		t.Fatalf("%d rows, %d of the Trigger's event", all, once)
	}
}

// What is not one valid CloudEvent is refused with 4xx (Knative does not
// redeliver it) and records nothing; an event PostgreSQL cannot hold (a NUL
// in its id) is refused alone, without failing the events committed in the
// same batch.
func TestMalformedDeliveriesAreRefusedAlone(t *testing.T) {
	f := start(t, func(c *journalservice.Config) { c.Batch.Linger = 50 * time.Millisecond })
	post := func(contentType, body string, headers map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+f.trigger)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp.StatusCode, b.String()
	}
	for name, c := range map[string]struct {
		contentType, body string
		headers           map[string]string
		code              int
	}{
		"not a CloudEvent":  {"application/json", `{"hello":"world"}`, nil, http.StatusBadRequest},
		"no id":             {cloudevents.ApplicationCloudEventsJSON, `{"specversion":"1.0","source":"s","type":"t"}`, nil, http.StatusBadRequest},
		"a batch":           {"application/cloudevents-batch+json", `[{"specversion":"1.0","id":"b1","source":"s","type":"t"}]`, nil, http.StatusBadRequest},
		"binary without id": {"application/json", `{}`, map[string]string{"Ce-Specversion": "1.0", "Ce-Source": "s", "Ce-Type": "t"}, http.StatusBadRequest},
		"larger than 1 MiB": {cloudevents.ApplicationCloudEventsJSON, `{"specversion":"1.0","id":"big","source":"s","type":"t","data":"` + strings.Repeat("x", 1<<20) + `"}`, nil, http.StatusRequestEntityTooLarge},
	} {
		if code, body := post(c.contentType, c.body, c.headers); code != c.code {
			t.Errorf("%s: %d %s, want %d", name, code, body, c.code)
		}
	}
	if all, _ := f.count(t, ""); all != 0 {
		t.Fatalf("%d events recorded from malformed deliveries", all)
	}

	// A NUL in the id, delivered among good events: the good ones share
	// its batch (a 50 ms linger gathers them) and are still recorded.
	var wg sync.WaitGroup
	good := make([]cloudevents.Event, 10)
	for i := range good {
		good[i] = sensorEvent(t, fmt.Sprintf("good-%d", i))
		wg.Go(func() {
			if code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, good[i], false); code != http.StatusAccepted {
				t.Errorf("a good event beside the bad one: %d %s %v", code, body, err)
			}
		})
	}
	wg.Go(func() {
		if code, body := post(cloudevents.ApplicationCloudEventsJSON, `{"specversion":"1.0","id":"nul\u0000id","source":"s","type":"t"}`, nil); code != http.StatusBadRequest {
			t.Errorf("an id with a NUL: %d %s, want 400", code, body)
		}
	})
	wg.Wait()
	if all, _ := f.count(t, ""); all != len(good) {
		t.Fatalf("%d events recorded, want the %d good ones", all, len(good))
	}
}

// The service prunes its journal in the background: with a size bound
// smaller than one event, what it records is deleted and counted; the
// positive control is that the events were recorded (202) first.
func TestServicePrunesByItsRetention(t *testing.T) {
	var pruner *journal.Pruner
	f := start(t, func(c *journalservice.Config) {
		pruner = journal.NewPruner(c.Recorder.(*journal.Postgres), journal.Retention{MaxBytes: 1}, 50*time.Millisecond, c.Log)
		c.Pruner = pruner
	})
	for i := range 5 {
		if code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, sensorEvent(t, fmt.Sprint("pruned-", i)), false); code != http.StatusAccepted {
			t.Fatalf("delivery: %d %s %v", code, body, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		events, _ := pruner.Pruned()
		if all, _ := f.count(t, ""); all == 0 && events == 5 {
			break
		}
		if time.Now().After(deadline) {
			all, _ := f.count(t, "")
			t.Fatalf("after 10 s: %d events left, %d pruned; want 0 and 5", all, events)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, _, scraper := readers(t, f.cs)
	if code, body, _ := get(t, f.url+"/metrics", scraper); code != http.StatusOK || !strings.Contains(body, "parry_journal_pruned_events_total 5\n") {
		t.Fatalf("/metrics: %d %s", code, body)
	}
}
