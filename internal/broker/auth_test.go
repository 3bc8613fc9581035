package broker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	knauth "knative.dev/eventing/pkg/auth"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/manifest"
)

const (
	sensorUser   = "system:serviceaccount:parry-sensor:parry-sensor"
	attackerUser = "system:serviceaccount:default:attacker"
)

// policies are config/'s in miniature: the sensor may send sensor events,
// the Trigger "step" delivers them to the function isolate, whose replies
// (sent with that Trigger's identity) may only be isolate's types, and the
// Trigger "after" takes isolate's done event.
const policies = `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: step, namespace: parry-system}
spec:
  broker: parry
  filters: [{prefix: {type: dev.parry.sensor.}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: isolate}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: after, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: dev.parry.step.isolate.done.v1}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: after}}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: sensor, namespace: parry-system}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: parry}}]
  from: [{sub: "` + sensorUser + `"}]
  filters: [{prefix: {type: dev.parry.sensor.}}]
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: step-isolate, namespace: parry-system}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: parry}}]
  from: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: step}}]
  filters: [{prefix: {type: dev.parry.step.isolate.}}]
`

// tokens writes a token file for users and returns each one's token.
func tokens(t testing.TB, users ...string) (*auth.TokenFile, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	toks, err := auth.EnsureTokenFile(path, users...)
	if err != nil {
		t.Fatal(err)
	}
	f, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return f, toks
}

// secured turns the ingress's authentication on with authn.
func secured(authn auth.Authenticator) func(*broker.Options) {
	return func(o *broker.Options) {
		o.Insecure = false
		o.Authenticators = map[string]auth.Authenticator{"parry-system/parry": authn}
	}
}

// postAs posts e with token ("" for none) and returns the status and body.
func postAs(t testing.TB, url, token string, e cloudevents.Event) (int, string) {
	t.Helper()
	req := newRequest(t, http.MethodPost, url, nil)
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
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("401 without WWW-Authenticate")
	}
	return resp.StatusCode, string(body)
}

// replier answers every event with an event of the type in its replytype
// extension, built as a step's reply is.
func replier(_ context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	r, err := events.Reply(e, events.Spec{Type: events.String(e, "replytype"), Source: "parry://function/isolate", Key: "isolate"})
	return &r, err
}

func TestIngressAuthenticatesAndAuthorizesSenders(t *testing.T) {
	file, tok := tokens(t, sensorUser, attackerUser)
	after := newRecorder()
	h := start(t, policies, map[string]events.Handler{"isolate": replier, "after": after.handle}, secured(file))
	sensorEvent := newEvent("s1", events.TypeProcessExec, map[string]any{"replytype": "dev.parry.step.isolate.done.v1"})
	forged := newEvent("f1", events.StepDone("snapshot"), nil)

	for _, c := range []struct {
		name, token string
		e           cloudevents.Event
		want        int
		reason      []string
	}{
		{"no token", "", sensorEvent, http.StatusUnauthorized, []string{"no bearer token", broker.Audience("parry-system/parry")}},
		{"unknown token", strings.Repeat("x", 64), sensorEvent, http.StatusUnauthorized, []string{"token rejected"}},
		{"the sensor sending a step's type", tok[sensorUser], forged, http.StatusForbidden, []string{sensorUser, events.StepDone("snapshot"), "EventPolicy parry-system/sensor"}},
		{"a sender no policy names", tok[attackerUser], sensorEvent, http.StatusForbidden, []string{attackerUser, "names this sender"}},
		{"the sensor sending a sensor event", tok[sensorUser], sensorEvent, http.StatusAccepted, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, body := postAs(t, h.url, c.token, c.e)
			if got != c.want {
				t.Fatalf("status %d (%s), want %d", got, body, c.want)
			}
			for _, r := range c.reason {
				if !strings.Contains(body, r) {
					t.Errorf("reason %q lacks %q", body, r)
				}
			}
		})
	}
	// The accepted event ran the chain, its reply from the Trigger's identity.
	after.wait(t, 1)
	last, err := h.journal.Last(context.Background(), 10)
	if err != nil || len(last) != 2 {
		t.Fatalf("journal holds %d events (%v), want the sensor's and isolate's reply", len(last), err)
	}
	if last[0].ID != "s1" || last[0].Sender != sensorUser || last[1].Sender != broker.TriggerIdentity("parry-system", "step") {
		t.Fatalf("journaled senders %q, %q", last[0].Sender, last[1].Sender)
	}
	if s := &h.broker.Stats; s.Unauthenticated.Load() != 2 || s.Forbidden.Load() != 2 {
		t.Fatalf("stats: %d unauthenticated, %d forbidden", s.Unauthenticated.Load(), s.Forbidden.Load())
	}
}

// A token that cannot be reviewed (the API server is unreachable) is not
// accepted: 503 with Retry-After, counted, nothing journaled.
func TestIngressFailsClosedWhenTheTokenReviewIsUnreachable(t *testing.T) {
	kube := kubernetes.NewForConfigOrDie(&rest.Config{Host: "http://127.0.0.1:1", Timeout: time.Second})
	tr := auth.NewTokenReview(kube, broker.Audience("parry-system/parry"), time.Minute)
	h := start(t, policies, map[string]events.Handler{"isolate": replier, "after": newRecorder().handle}, secured(tr))
	got, body := postAs(t, h.url, "some-token", newEvent("u1", events.TypeProcessExec, nil))
	if got != http.StatusServiceUnavailable || !strings.Contains(body, "could not be reviewed") {
		t.Fatalf("status %d (%s), want 503 naming the cause", got, body)
	}
	if h.broker.Stats.Unavailable.Load() != 1 || tr.Stats.Unavailable.Load() != 1 {
		t.Fatalf("not counted: broker %d, TokenReview %d", h.broker.Stats.Unavailable.Load(), tr.Stats.Unavailable.Load())
	}
	if last, _ := h.journal.Last(context.Background(), 1); len(last) != 0 {
		t.Fatalf("journaled %v", last)
	}
}

func TestIngressRefusesEventsOutsideTheFreshnessWindow(t *testing.T) {
	h := start(t, "", nil)
	at := func(id string, ts time.Time) cloudevents.Event {
		e := newEvent(id, events.TypeProcessExec, nil)
		e.SetTime(ts)
		return e
	}
	undated := newEvent("undated", events.TypeProcessExec, nil)
	undated.Context.(interface{ SetTime(time.Time) error }).SetTime(time.Time{})
	for _, c := range []struct {
		name   string
		e      cloudevents.Event
		want   int
		reason string
	}{
		{"2001", at("old", time.Date(2001, 9, 1, 0, 0, 0, 0, time.UTC)), http.StatusBadRequest, "--ingress-max-age"},
		{"4 minutes old", at("recent", time.Now().Add(-4*time.Minute)), http.StatusAccepted, ""},
		{"29 s ahead", at("ahead29", time.Now().Add(29*time.Second)), http.StatusAccepted, ""},
		{"31 s ahead", at("ahead31", time.Now().Add(31*time.Second)), http.StatusBadRequest, "--ingress-max-skew"},
		{"no time", undated, http.StatusBadRequest, "no time attribute"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, body := postAs(t, h.url, "", c.e)
			if got != c.want || !strings.Contains(body, c.reason) {
				t.Fatalf("status %d (%s), want %d naming %q", got, body, c.want, c.reason)
			}
		})
	}
	if n := h.broker.Stats.Stale.Load(); n != 3 {
		t.Fatalf("%d stale events counted, want 3", n)
	}
}

// A sender retrying an event the broker journaled (its 202 lost) gets 202
// however old the event has become; a new event as old is refused.
func TestIngressAcceptsARedeliveryOfAJournaledEventPastTheWindow(t *testing.T) {
	h := start(t, "", nil, func(o *broker.Options) { o.Freshness = broker.Freshness{MaxAge: time.Second} })
	ts := time.Now().Add(-800 * time.Millisecond)
	e := newEvent("r1", events.TypeProcessExec, nil)
	e.SetTime(ts)
	if got, body := postAs(t, h.url, "", e); got != http.StatusAccepted {
		t.Fatalf("first: %d %s", got, body)
	}
	time.Sleep(400 * time.Millisecond)
	if got, body := postAs(t, h.url, "", e); got != http.StatusAccepted {
		t.Fatalf("redelivery of a journaled event refused: %d %s", got, body)
	}
	other := newEvent("r2", events.TypeProcessExec, nil)
	other.SetTime(ts)
	if got, body := postAs(t, h.url, "", other); got != http.StatusBadRequest {
		t.Fatalf("a new event as old: %d %s, want 400", got, body)
	}
}

// A step's reply re-enters with the identity of the Trigger that delivered
// to it, and meets the EventPolicies as Knative's: its own types pass, any
// other is refused (403, not retried) and never delivered.
func TestRepliesMeetTheEventPolicies(t *testing.T) {
	file, tok := tokens(t, sensorUser)
	after := newRecorder()
	h := start(t, policies, map[string]events.Handler{"isolate": replier, "after": after.handle}, secured(file))
	ok := newEvent("ok", events.TypeProcessExec, map[string]any{"replytype": events.StepDone("isolate")})
	bad := newEvent("bad", events.TypeProcessExec, map[string]any{"replytype": events.StepDone("respawn")})
	for _, e := range []cloudevents.Event{bad, ok} {
		if got, body := postAs(t, h.url, tok[sensorUser], e); got != http.StatusAccepted {
			t.Fatalf("%s: %d %s", e.ID(), got, body)
		}
	}
	after.wait(t, 1) // the positive control: isolate's own type went through
	deadline := time.Now().Add(5 * time.Second)
	for h.broker.Stats.RepliesRefused.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	tree, err := h.journal.Tree(context.Background(), "bad")
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.Children) != 0 || len(tree.Deliveries) != 1 || tree.Deliveries[0].Code != http.StatusForbidden ||
		tree.Deliveries[0].State != journal.Failed || !strings.Contains(tree.Deliveries[0].Error, events.StepDone("respawn")) {
		t.Fatalf("refused reply: children %d, deliveries %+v", len(tree.Children), tree.Deliveries)
	}
}

// Somebody allowed to send something (here the sensor) pre-sends an event
// with the id and source a step's reply will have: the real reply is still
// journaled and delivered, because dedup is by sender.
func TestAPreSentReplyIDDoesNotPreemptTheReply(t *testing.T) {
	file, tok := tokens(t, sensorUser)
	after := newRecorder()
	h := start(t, policies, map[string]events.Handler{"isolate": replier, "after": after.handle}, secured(file))
	cause := newEvent("cause", events.TypeProcessExec, map[string]any{"replytype": events.StepDone("isolate")})
	want, err := replier(context.Background(), cause)
	if err != nil {
		t.Fatal(err)
	}
	squat := newEvent(want.ID(), events.TypeProcessExec, nil)
	squat.SetSource(want.Source())
	if got, body := postAs(t, h.url, tok[sensorUser], squat); got != http.StatusAccepted {
		t.Fatalf("pre-sent id: %d %s", got, body)
	}
	if got, body := postAs(t, h.url, tok[sensorUser], cause); got != http.StatusAccepted {
		t.Fatalf("cause: %d %s", got, body)
	}
	if ids := after.wait(t, 1); ids[0] != want.ID() {
		t.Fatalf("after got %v, want the reply %s", ids, want.ID())
	}
}

// The embedded broker's decision is Knative's (pkg/auth.SubjectAndFiltersPass
// over the applying policies, sorted by name), wildcards and first match
// included.
func TestPolicyDecisionsAreKnatives(t *testing.T) {
	set, err := manifest.Parse(context.Background(), "p.yaml", []byte(brokerYAML+policies+`---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: a-wildcard, namespace: parry-system}
spec:
  from: [{sub: "system:serviceaccount:team:*"}]
  filters: [{suffix: {type: .failed.v1}}]
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: z-shadowed, namespace: parry-system}
spec:
  from: [{sub: "system:serviceaccount:team:x"}]
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: other-broker, namespace: parry-system}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: elsewhere}}]
  from: [{sub: "`+attackerUser+`"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	var swf []knauth.SubjectsWithFilters // what Knative's ingress would hold, sorted by name
	for _, name := range []string{"a-wildcard", "sensor", "step-isolate", "z-shadowed"} {
		for _, p := range set.EventPolicies {
			if p.Name != name {
				continue
			}
			var subs []string
			for _, f := range p.Spec.From {
				if f.Sub != nil {
					subs = append(subs, *f.Sub)
				} else {
					subs = append(subs, "system:serviceaccount:"+f.Ref.Namespace+":"+broker.TriggerServiceAccount(f.Ref.Name))
				}
			}
			swf = append(swf, knauth.SubjectsWithFilters{Subjects: subs, Filters: p.Spec.Filters})
		}
	}
	trig := broker.TriggerIdentity("parry-system", "step")
	for _, sub := range []string{sensorUser, trig, attackerUser, "system:serviceaccount:team:x", "system:serviceaccount:team:y", "system:serviceaccount:teams:x"} {
		for _, typ := range []string{events.TypeProcessExec, events.StepDone("isolate"), events.StepFailed("isolate"), events.StepDone("snapshot")} {
			e := newEvent("x", typ, nil)
			got, reason, err := broker.Decide(context.Background(), set, "parry-system/parry", sub, e)
			if err != nil {
				t.Fatal(err)
			}
			want := knauth.SubjectAndFiltersPass(context.Background(), sub, swf, &e, zap.NewNop().Sugar())
			if got != want {
				t.Errorf("%s sending %s: parry says %v (%s), Knative %v", sub, typ, got, reason, want)
			}
		}
	}
}

func TestTriggerIdentityIsKnatives(t *testing.T) {
	for _, name := range []string{"step", "crypto-miner-classify", strings.Repeat("a-very-long-playbook-name-", 3) + "respawn"} {
		want := knauth.GetOIDCServiceAccountNameForResource(eventingv1.SchemeGroupVersion.WithKind("Trigger"), metav1.ObjectMeta{Name: name, Namespace: "parry-system"})
		if got := broker.TriggerServiceAccount(name); got != want {
			t.Errorf("%s: %q, Knative %q", name, got, want)
		}
	}
}

// Config mistakes the embedded broker cannot enforce are errors at start.
func TestPoliciesItCannotResolveAreErrors(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{`from: [{ref: {apiVersion: sources.knative.dev/v1, kind: ApiServerSource, name: s}}]`, "refs to Triggers only"},
		{`from: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: nope}}]`, "Trigger parry-system/nope, which no manifest defines"},
	} {
		set, err := manifest.Parse(context.Background(), "p.yaml", []byte(brokerYAML+fmt.Sprintf("---\napiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata: {name: p, namespace: parry-system}\nspec:\n  %s\n", c.doc)))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = broker.Decide(context.Background(), set, "parry-system/parry", sensorUser, newEvent("x", "t", nil))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "p.yaml:") {
			t.Errorf("error %v, want one naming the file and %q", err, c.want)
		}
	}
	// And without an authenticator the broker does not start.
	set, _ := manifest.Parse(context.Background(), "b.yaml", []byte(brokerYAML))
	j, err := journal.Open(context.Background(), filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := broker.New(broker.Options{Manifests: set, Journal: j, Client: http.DefaultClient}); err == nil || !strings.Contains(err.Error(), "no authenticator") {
		t.Fatalf("New without an authenticator: %v", err)
	}
}
