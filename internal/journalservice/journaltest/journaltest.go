// Package journaltest helps tests of the journal service: tokens of the
// identities that deliver and read, deliveries as Knative's broker filter
// makes them, and an incident's events. Tests import it; no binary does.
package journaltest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journalservice"
	"parry.dev/parry/internal/playbook"
)

// Account makes sure the ServiceAccount namespace/name exists (and its
// namespace).
func Account(t testing.TB, cs kubernetes.Interface, namespace, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// Token is a token of namespace/name for audience, from the API server
// (TokenRequest), valid for an hour; the account is made if missing.
func Token(t testing.TB, cs kubernetes.Interface, namespace, name, audience string) string {
	t.Helper()
	Account(t, cs, namespace, name)
	hour := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &hour}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// TriggerToken is what Knative's broker filter delivers to the journal
// with: a token of the journal's Trigger's OIDC identity for
// journalservice.DeliveryAudience.
func TriggerToken(t testing.TB, cs kubernetes.Interface) string {
	t.Helper()
	return Token(t, cs, playbook.Namespace, broker.TriggerServiceAccount(journalservice.Name), journalservice.DeliveryAudience)
}

// Deliver posts e to the journal service at url with token ("" for none),
// in binary mode as Knative's broker filter does, or in structured mode,
// and returns the status and body of the answer.
func Deliver(ctx context.Context, hc *http.Client, url, token string, e cloudevents.Event, structured bool) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, "", err
	}
	if structured {
		body, err := e.MarshalJSON()
		if err != nil {
			return 0, "", err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
	} else if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), nil
}

// Incident is the events of one incident as its steps make them: a sensor
// event, the incident classify opens for it (playbook, pod, score), a
// second detection joining it, isolate's done reply, snapshot's failed one
// (as parry-failed publishes it), and the incident's closing: two causal
// trees, one from each detection.
func Incident(t testing.TB, key, playbookName, namespace string, at time.Time) []cloudevents.Event {
	t.Helper()
	must := func(e cloudevents.Event, err error) cloudevents.Event {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	pod := map[string]string{events.ExtPodNamespace: namespace, events.ExtPodName: "web-" + key, events.ExtPodUID: "uid-" + key, events.ExtNode: "node-1"}
	sensor := must(events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/node-1", Key: key, Time: at,
		Extensions: pod, Data: map[string]any{"argv": []string{"xmrig", "--donate-level", "1"}}}))
	incident := "inc-" + key
	opened := must(events.Reply(sensor, events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "open", Time: at.Add(time.Millisecond),
		Extensions: map[string]string{events.ExtIncident: incident, events.ExtPlaybook: playbookName, events.ExtScore: "90", events.ExtSeverity: "critical", events.ExtResponse: events.ResponseAct},
		Data:       map[string]any{"reasons": []string{"comm xmrig"}, "description": "a crypto miner runs"}}))
	again := must(events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/node-1", Key: key + "-again", Time: at.Add(2 * time.Millisecond), Extensions: pod}))
	joined := must(events.Reply(again, events.Spec{Type: events.TypeIncidentJoined, Source: "parry://function/classify", Key: "join", Time: at.Add(3 * time.Millisecond),
		Extensions: map[string]string{events.ExtIncident: incident, events.ExtPlaybook: playbookName}}))
	isolated := must(events.Reply(opened, events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "isolate", Time: at.Add(4 * time.Millisecond),
		Extensions: map[string]string{events.ExtStep: "isolate"}, Data: map[string]any{"applied": []string{"label", "networkpolicy"}}}))
	failed := must(events.Reply(isolated, events.Spec{Type: events.StepFailed("snapshot"), Source: "parry://function/parry-failed", Key: "snapshot", Time: at.Add(5 * time.Millisecond),
		Extensions: map[string]string{events.ExtStep: "snapshot"}, Data: map[string]any{"reason": "gave up after the Trigger's retries"}}))
	closed := must(events.Reply(opened, events.Spec{Type: events.TypeIncidentClosed, Source: "parry://cli/incident-close", Key: "close", Time: at.Add(6 * time.Millisecond),
		Data: map[string]any{"closedBy": "oncall@example.com"}}))
	return []cloudevents.Event{sensor, opened, again, joined, isolated, failed, closed}
}
