package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/podcgroup"
)

// post sends one binary-mode CloudEvent of type typ, timestamped at, to the
// stack's Broker with token (none when ""), and returns the status and body.
func (w *world) post(t *testing.T, token, typ, id string, at time.Time, ext map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, w.stack.BrokerURL(stack.DefaultBroker), strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{"Ce-Specversion": "1.0", "Ce-Id": id, "Ce-Source": "parry://sensor/" + w.env.NodeName, "Ce-Type": typ,
		"Ce-Time": at.UTC().Format(time.RFC3339Nano), "Content-Type": "application/json"}
	for k, v := range ext {
		h["Ce-"+k] = v
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 2048)
	n, _ := resp.Body.Read(buf)
	return resp.StatusCode, string(buf[:n])
}

// serviceAccountToken mints a token of ns/name for audience from the real
// API server, creating the namespace and account if needed.
func (w *world) serviceAccountToken(t *testing.T, ns, name, audience string) string {
	t.Helper()
	ctx := t.Context()
	if _, err := w.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := w.kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	tr, err := w.kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// TestOnlyParrysSendersAreHeard: `parry run` against a cluster verifies
// every sender's token with the real API server's TokenReview for the
// Broker's audience and applies config/'s EventPolicies. Forged events are
// refused, cost no incident and do not trip the breaker: eleven of them
// (the crypto-miner playbook allows ten pods) and a real detection after
// them is still acted on. The sensor's own account, sending a sensor event,
// is the positive control of the TokenReview path.
func TestOnlyParrysSendersAreHeard(t *testing.T) {
	w := start(t)
	podcgroup.Listen(t, "127.0.0.1:3333")
	audience := broker.Audience(stack.DefaultBroker)
	sensorToken := w.serviceAccountToken(t, playbook.SensorNamespace, playbook.SensorServiceAccount, audience)
	now := time.Now()
	connect := func(i int) map[string]string {
		return map[string]string{"node": w.env.NodeName, "poduid": fmt.Sprintf("00000000-0000-0000-0000-%012d", i), "podns": "forged", "podname": fmt.Sprint("p", i), "dport": "3333", "comm": "xmrig"}
	}
	for name, c := range map[string]struct {
		token, typ string
		code       int
		want       string
	}{
		"no token":                       {"", events.TypeNetworkConnect, http.StatusUnauthorized, "needs a bearer token"},
		"a token for another audience":   {w.serviceAccountToken(t, playbook.SensorNamespace, playbook.SensorServiceAccount, "parry-sensor"), events.TypeNetworkConnect, http.StatusUnauthorized, "token rejected"},
		"a workload's own token":         {w.serviceAccountToken(t, "trust", "web", audience), events.TypeNetworkConnect, http.StatusForbidden, "system:serviceaccount:trust:web"},
		"the sensor sending a step type": {sensorToken, events.StepDone("snapshot"), http.StatusForbidden, events.StepDone("snapshot")},
	} {
		if code, body := w.post(t, c.token, c.typ, "forged-"+strings.ReplaceAll(name, " ", "-"), now, connect(99)); code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", name, code, body, c.code, c.want)
		}
	}
	for i := range 11 {
		if code, body := w.post(t, "", events.TypeNetworkConnect, fmt.Sprint("forged-", i), now, connect(i)); code != http.StatusUnauthorized {
			t.Fatalf("forged event %d: %d %s, want 401", i, code, body)
		}
	}
	if code, body := w.post(t, sensorToken, events.TypeSensorHealth, "sensor-health", now, map[string]string{"node": w.env.NodeName, "severity": "info"}); code != http.StatusAccepted {
		t.Fatalf("the sensor's own account, reviewed by TokenReview: %d %s, want 202", code, body)
	}

	pods := devenv.WebDeployment(t, w.kube, "after-forgery", 2)
	if code := connectFrom(t, podcgroup.NewFor(t, string(pods[0].UID)), "127.0.0.1:3333"); code != 0 {
		t.Fatalf("the miner's connect exited %d", code)
	}
	opened := w.reply(t, string(pods[0].UID), events.TypeIncidentOpened, 10*time.Second)
	if got := events.String(opened.Event, events.ExtResponse); got != events.ResponseAct {
		t.Fatalf("the real detection after 11 forged events: response %q, want act: %s", got, opened.Event.Data())
	}
	if iso := decode[isolate.Result](t, w.reply(t, string(pods[0].UID), events.StepDone(isolate.Name), 10*time.Second).Event); iso.KernelBlock != "applied" {
		t.Fatalf("the real detection was not blocked: %+v", iso)
	}
	es, err := w.stack.Journal.Last(context.Background(), 5000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if strings.HasPrefix(e.ID, "forged-") {
			t.Fatalf("a forged event was journaled: %s %s from %q", e.ID, e.Type, e.Sender)
		}
	}
}
