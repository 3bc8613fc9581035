package failed_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/functions/failed"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/step"
)

func TestStepOf(t *testing.T) {
	for dest, want := range map[string]string{
		"function:isolate": "isolate",
		"http://snapshot.parry-system.svc.cluster.local/": "snapshot",
		"": "",
	} {
		if got := failed.StepOf(dest); got != want {
			t.Errorf("StepOf(%q) = %q, want %q", dest, got, want)
		}
	}
}

func TestHandlePublishesTheStepsFailure(t *testing.T) {
	cause, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "k",
		Extensions: map[string]string{events.ExtIncident: "inc-9", events.ExtPodName: "web-1"}})
	if err != nil {
		t.Fatal(err)
	}
	cause.SetExtension("knativeerrordest", "function:isolate")
	cause.SetExtension("knativeerrorcode", "500")
	cause.SetExtension("knativeerrordata", base64.StdEncoding.EncodeToString([]byte("the API server is unavailable")))
	var mu sync.Mutex
	var got []cloudevents.Event
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, *e)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sink.Close()
	h, err := step.Build(t.Context(), failed.Definition(), step.Deps{Sink: sink.URL, HTTP: sink.Client(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if reply, err := h(context.Background(), cause); err != nil || reply != nil {
		t.Fatalf("reply %v, error %v: want none (the failed event is published)", reply, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Type() != events.StepFailed("isolate") || events.String(got[0], events.ExtIncident) != "inc-9" ||
		events.String(got[0], events.ExtCausation) != cause.ID() || !strings.Contains(string(got[0].Data()), "the API server is unavailable") {
		t.Fatalf("published %+v", got)
	}
	if events.String(got[0], "knativeerrordest") != "" {
		t.Fatal("the failed event kept the dead-letter attributes")
	}
}

// Through the embedded broker: a step that keeps failing is dead-lettered to
// parry-failed, whose failed event re-enters the broker and the journal.
func TestThroughTheBroker(t *testing.T) {
	dir := t.TempDir()
	writeErr := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: parry, namespace: parry-system}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: flaky, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: dev.parry.incident.opened.v1}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: flaky}}
  delivery:
    retry: 1
    backoffPolicy: linear
    backoffDelay: PT0.01S
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: parry-failed}}
`), 0o644)
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	// The dead-letter chain, not senders, is under test: the test posts
	// without a token.
	s, err := stack.Start(context.Background(), stack.Options{ConfigDir: dir, JournalPath: filepath.Join(dir, "j.db"), Listen: "127.0.0.1:0", Log: zerolog.Nop(), InsecureIngress: true,
		Steps: []step.Definition{failed.Definition()},
		Functions: map[string]events.Handler{
			"flaky": func(context.Context, cloudevents.Event) (*cloudevents.Event, error) {
				return nil, errors.New("the API server is unavailable")
			},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	cause, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "k2",
		Extensions: map[string]string{events.ExtIncident: "inc-dl"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := failed.HTTPPublisher(s.BrokerURL(stack.DefaultBroker), http.DefaultClient)(context.Background(), cause); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		trees, err := s.Journal.Incident(context.Background(), "inc-dl")
		if err == nil && len(trees) == 1 && len(trees[0].Children) == 1 && trees[0].Children[0].Type == events.StepFailed("flaky") {
			return
		}
	}
	t.Fatal("no dev.parry.step.flaky.failed.v1 in the incident's trace")
}
