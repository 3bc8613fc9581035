package revoke_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/functions/revoke"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
)

// sensorEvent is what the sensor emits for a process in p: the pod travels
// in extension attributes.
func sensorEvent(t *testing.T, w *workload, p *pod) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{
		Type:   events.TypeProcessExec,
		Source: "parry://sensor/kwok-node-0",
		Key:    fmt.Sprintf("%s/%s/%d", w.ns, p.name, time.Now().UnixNano()),
		Extensions: map[string]string{
			events.ExtPodNamespace: w.ns,
			events.ExtPodName:      p.name,
			events.ExtPodUID:       p.uid,
			events.ExtIncident:     "inc-" + p.name,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// newRevoker builds the step with a token of exactly policy.hcl's policy.
// params is a playbook that gives revoke fixed parameters.
type params map[string]any

func (p params) StepConfig(_, _ string) (step.StepConfig, error) {
	validated, err := revoke.Definition().Spec.Validate(p)
	return step.StepConfig{Params: validated}, err
}

// build is the step as the runtime runs it.
func build(t *testing.T, vault *vaultapi.Client, kube kubernetes.Interface, p params) (events.Handler, error) {
	h, err := step.Build(t.Context(), revoke.Definition(), step.Deps{IncidentKey: steptest.Key, Vault: vault, Kube: kube, Playbooks: p, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		return nil, err
	}
	return steptest.Sealed(h), nil
}

func newRevoker(t *testing.T, in *infra, params map[string]any) events.Handler {
	t.Helper()
	client := vaultClient(t, in.env.VaultAddr, revokerToken(t, in, revokePolicy))
	r, err := build(t, client, in.kube, params)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func result(t *testing.T, reply *cloudevents.Event, wantType string) revoke.Result {
	t.Helper()
	if reply == nil {
		t.Fatal("no reply")
	}
	var res revoke.Result
	if err := reply.DataAs(&res); err != nil {
		t.Fatal(err)
	}
	if reply.Type() != wantType {
		t.Fatalf("reply %s (reason %q), want %s", reply.Type(), res.Reason, wantType)
	}
	// A done reply that revoked something says so for the trace.
	if n := len(res.Accessors); reply.Type() == events.StepDone(revoke.Name) && (n > 0 || res.LeasesRevoked > 0) &&
		!strings.Contains(string(reply.Data()), fmt.Sprintf(`"applied":["Vault: %d token(s) revoked`, n)) {
		t.Errorf("the reply does not say what it revoked: %s", reply.Data())
	}
	return res
}

// watchDeath polls p's credential from start until a login fails and
// returns a function that reports how long after start that was.
func watchDeath(ctx context.Context, in *infra, p *pod, start time.Time) func() time.Duration {
	var dead atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil && time.Since(start) < 60*time.Second {
			c, err := dbLogin(ctx, in.env, p.user, p.pass)
			if err != nil {
				dead.Store(int64(time.Since(start)))
				return
			}
			c.Close(ctx)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() time.Duration { wg.Wait(); return time.Duration(dead.Load()) }
}

func TestPodModeRevokesOnlyThatPod(t *testing.T) {
	in := setup(t)
	ctx := t.Context()
	w := newWorkload(t, in, "a", "b")
	a, b := w.pods["a"], w.pods["b"]
	r := newRevoker(t, in, map[string]any{"leases": []any{"database/"}})
	e := sensorEvent(t, w, a)

	start := time.Now()
	deadAfter := watchDeath(ctx, in, a, start)
	reply, err := r(ctx, e)
	handled := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(revoke.Name))
	dead := deadAfter()
	t.Logf("pod mode: event -> credential dead %s, Handle returned after %s (%d tokens scanned, %d leases revoked)", dead, handled, res.TokensScanned, res.LeasesRevoked)
	if dead == 0 {
		t.Fatal("pod A's credential still logs in")
	}
	if len(res.Accessors) != 1 || res.LeasesRevoked != 1 || res.LeasesPending != 0 {
		t.Errorf("result %+v: want 1 accessor, 1 lease revoked, none pending", res)
	}
	if login, session := alive(ctx, in.env, a); login || session {
		t.Errorf("pod A after revoke: login works=%v, open session works=%v; want both dead", login, session)
	}
	if login, session := alive(ctx, in.env, b); !login || !session {
		t.Errorf("pod B after revoking A: login works=%v, open session works=%v; want both alive", login, session)
	}
	if _, err := vaultClient(t, in.env.VaultAddr, a.token).Auth().Token().LookupSelf(); err == nil {
		t.Error("pod A's Vault token still valid")
	}
	if _, err := vaultClient(t, in.env.VaultAddr, b.token).Auth().Token().LookupSelf(); err != nil {
		t.Errorf("pod B's Vault token revoked too: %v", err)
	}
	body := string(reply.Data())
	for _, p := range w.pods {
		if strings.Contains(body, p.token) || strings.Contains(body, p.pass) {
			t.Fatal("the reply carries a token or password")
		}
	}

	// Redelivery: same reply id, nothing new revoked.
	again, err := r(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	res2 := result(t, again, events.StepDone(revoke.Name))
	if again.ID() != reply.ID() || len(res2.Accessors) != 0 || res2.Note == "" {
		t.Errorf("redelivery: id %s (first %s), result %+v; want the same id, no accessor, a note", again.ID(), reply.ID(), res2)
	}
	if events.String(*again, events.ExtCausation) != e.ID() || events.String(*again, events.ExtPodUID) != a.uid {
		t.Errorf("reply lacks causation or the pod's extensions: %v", again.Extensions())
	}
	if login, session := alive(ctx, in.env, b); !login || !session {
		t.Errorf("pod B after redelivery: login=%v session=%v", login, session)
	}
}

// The pod is gone (deleted, or replaced under the same name) but its tokens
// are not: pod mode revokes by the event's pod UID.
func TestPodModeAfterThePodIsGone(t *testing.T) {
	in := setup(t)
	ctx := t.Context()
	w := newWorkload(t, in, "a")
	a := w.pods["a"]
	zero := int64(0)
	if err := in.kube.CoreV1().Pods(w.ns).Delete(ctx, a.name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pod a deleted", func() error {
		if _, err := in.kube.CoreV1().Pods(w.ns).Get(ctx, a.name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	reply, err := newRevoker(t, in, map[string]any{"leases": []any{"database/"}})(ctx, sensorEvent(t, w, a))
	if err != nil {
		t.Fatal(err)
	}
	if res := result(t, reply, events.StepDone(revoke.Name)); len(res.Accessors) != 1 {
		t.Errorf("result %+v: want the gone pod's token revoked", res)
	}
	if login, session := alive(ctx, in.env, a); login || session {
		t.Errorf("gone pod's credential: login=%v session=%v; want both dead", login, session)
	}
}

func TestServiceAccountModeRevokesEveryPodOfTheAccount(t *testing.T) {
	in := setup(t)
	ctx := t.Context()
	w := newWorkload(t, in, "a", "b")
	a, b := w.pods["a"], w.pods["b"]
	r := newRevoker(t, in, map[string]any{"mode": "serviceaccount", "leases": []any{"database/"}})
	start := time.Now()
	deadAfter := watchDeath(ctx, in, a, start)
	reply, err := r(ctx, sensorEvent(t, w, a))
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(revoke.Name))
	t.Logf("serviceaccount mode: event -> pod A credential dead %s, Handle %s; blast radius: %s", deadAfter(), time.Since(start), res.BlastRadius)
	if len(res.Accessors) != 2 || res.LeasesRevoked != 2 || res.BlastRadius == "" || res.ServiceAccount != w.ns+"/web" {
		t.Errorf("result %+v: want 2 accessors, 2 leases, the blast radius stated", res)
	}
	for _, p := range []*pod{a, b} {
		if login, session := alive(ctx, in.env, p); login || session {
			t.Errorf("pod %s: login=%v session=%v; want both dead", p.name, login, session)
		}
	}
}

// Prefix mode revokes the playbook's prefix and nothing a workload chose:
// there is no parameter that reads the path from a pod annotation, and
// without a prefix the step fails rather than look at the pod. Each pod here
// is annotated parry.dev/vault-leases with its own lease path, as a workload
// could write any path it likes.
func TestPrefixModeRevokesThePlaybooksPrefixOnly(t *testing.T) {
	in := setup(t)
	ctx := t.Context()
	w := newWorkload(t, in, "a", "b")
	a, b := w.pods["a"], w.pods["b"]
	if _, err := revoke.Definition().Spec.Validate(map[string]any{"mode": "prefix", "annotation": "parry.dev/vault-leases"}); err == nil || !strings.Contains(err.Error(), `no parameter "annotation"`) {
		t.Fatalf("a playbook may still take the lease path from a pod annotation: %v", err)
	}
	r := newRevoker(t, in, map[string]any{"mode": "prefix"})
	reply, err := r(ctx, sensorEvent(t, w, a))
	if err != nil {
		t.Fatal(err)
	}
	if res := result(t, reply, events.StepFailed(revoke.Name)); !strings.Contains(res.Reason, "prefix parameter") || res.LeasesRevoked != 0 {
		t.Errorf("prefix mode without a prefix: %+v", res)
	}
	if login, session := alive(ctx, in.env, a); !login || !session {
		t.Fatalf("pod A: login=%v session=%v after a revoke without prefix; want both alive", login, session)
	}
	// The event names pod B, annotated with B's path; the playbook names A's.
	prefix := dbMount + "/creds/" + a.dbRole + "/"
	r = newRevoker(t, in, map[string]any{"mode": "prefix", "prefix": prefix})
	start := time.Now()
	deadAfter := watchDeath(ctx, in, a, start)
	reply, err = r(ctx, sensorEvent(t, w, b))
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(revoke.Name))
	t.Logf("prefix mode (%s): event -> credential dead %s, Handle %s", res.Prefix, deadAfter(), time.Since(start))
	if res.LeasesRevoked != 1 || res.Prefix != prefix {
		t.Errorf("result %+v: want 1 lease under the playbook's prefix %s", res, prefix)
	}
	if login, session := alive(ctx, in.env, a); login || session {
		t.Errorf("pod A: login=%v session=%v; want both dead", login, session)
	}
	if login, session := alive(ctx, in.env, b); !login || !session {
		t.Errorf("pod B: login=%v session=%v; want both alive (its annotation names its own leases)", login, session)
	}
	// A prefix outside the policy's narrowed revoke-prefix path is refused by
	// Vault, and the step says which capability it lacks.
	r = newRevoker(t, in, map[string]any{"mode": "prefix", "prefix": "database/roles/x/"})
	reply, err = r(ctx, sensorEvent(t, w, b))
	if err != nil {
		t.Fatal(err)
	}
	res = result(t, reply, events.StepFailed(revoke.Name))
	if !strings.Contains(res.Reason, "sys/leases/revoke-prefix/database/roles/x/") || !strings.Contains(res.Reason, "403") {
		t.Errorf("reason %q does not name the denied path", res.Reason)
	}
	for _, bad := range []string{"database/", "", "/database/creds/x", "sys/leases/x"} {
		r := newRevoker(t, in, map[string]any{"mode": "prefix", "prefix": bad})
		reply, err := r(ctx, sensorEvent(t, w, b))
		if err != nil {
			t.Fatal(err)
		}
		result(t, reply, events.StepFailed(revoke.Name))
	}
}

func TestNoTokensIsASuccessThatSaysSo(t *testing.T) {
	in := setup(t)
	w := &workload{ns: "nowhere", sa: "web"}
	r, err := build(t, vaultClient(t, in.env.VaultAddr, revokerToken(t, in, revokePolicy)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := r(t.Context(), sensorEvent(t, w, &pod{name: "gone", uid: "00000000-0000-0000-0000-000000000000"}))
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(revoke.Name))
	if len(res.Accessors) != 0 || !strings.Contains(res.Note, "no Vault token") {
		t.Errorf("result %+v", res)
	}
}

func TestPodWithoutItsOwnServiceAccountFails(t *testing.T) {
	in := setup(t)
	ctx := t.Context()
	w := newWorkload(t, in)
	eventually(t, 30*time.Second, "default service account", func() error {
		_, err := in.kube.CoreV1().ServiceAccounts(w.ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	p := createPlainPod(t, in, w.ns, "plain")
	for wantReason, params := range map[string]map[string]any{
		"has no service account of its own": {"mode": "serviceaccount"},
		`not the expected "web"`:            {"serviceaccount": "web"},
	} {
		r := newRevoker(t, in, params)
		reply, err := r(ctx, sensorEvent(t, w, p))
		if err != nil {
			t.Fatal(err)
		}
		if res := result(t, reply, events.StepFailed(revoke.Name)); !strings.Contains(res.Reason, wantReason) {
			t.Errorf("reason %q does not contain %q", res.Reason, wantReason)
		}
	}
	// Without a Kubernetes client, the modes that need the pod say so.
	r, err := build(t, vaultClient(t, in.env.VaultAddr, revokerToken(t, in, revokePolicy)), nil, map[string]any{"mode": "serviceaccount"})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := r(ctx, sensorEvent(t, w, p))
	if err != nil {
		t.Fatal(err)
	}
	if res := result(t, reply, events.StepFailed(revoke.Name)); !strings.Contains(res.Reason, "without a Kubernetes client") {
		t.Errorf("reason %q", res.Reason)
	}
}

func TestPermissionDeniedFailsNamingTheCapability(t *testing.T) {
	in := setup(t)
	client := vaultClient(t, in.env.VaultAddr, revokerToken(t, in, "default"))
	r, err := build(t, client, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := r(t.Context(), sensorEvent(t, &workload{ns: "x"}, &pod{name: "y", uid: "z"}))
	if err != nil {
		t.Fatalf("permission denied is permanent, want a failed reply, got error %v", err)
	}
	res := result(t, reply, events.StepFailed(revoke.Name))
	if !strings.Contains(res.Reason, `"list+sudo" on path "auth/token/accessors"`) {
		t.Errorf("reason %q does not name the missing capability", res.Reason)
	}
}

func TestVaultUnreachableOrSealedIsRetried(t *testing.T) {
	sealed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"errors":["Vault is sealed"]}`))
	}))
	defer sealed.Close()
	for name, addr := range map[string]string{"unreachable": "http://127.0.0.1:1", "sealed": sealed.URL} {
		r, err := build(t, vaultClient(t, addr, "t"), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		reply, err := r(t.Context(), sensorEvent(t, &workload{ns: "x"}, &pod{name: "y", uid: "z"}))
		if err == nil || reply != nil {
			t.Errorf("%s: reply %v, error %v; want an error for the broker to retry", name, reply, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

// Thousands of tokens: the search looks each accessor up concurrently and
// finishes in bounded time. Last in the file: the tokens stay until their TTL.
func TestSearchThousandsOfAccessors(t *testing.T) {
	in := setup(t)
	const n = 2000
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := in.root.Auth().Token().CreateOrphan(&vaultapi.TokenCreateRequest{Policies: []string{"default"}, TTL: "10m", Metadata: map[string]string{"pod_uid": fmt.Sprint("other-", i)}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	t.Logf("created %d tokens in %s", n, time.Since(start))
	r, err := build(t, vaultClient(t, in.env.VaultAddr, revokerToken(t, in, revokePolicy)), nil, map[string]any{"mounts": []any{"auth/token/"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start = time.Now()
	reply, err := r(ctx, sensorEvent(t, &workload{ns: "x"}, &pod{name: "y", uid: "other-1999"}))
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, reply, events.StepDone(revoke.Name))
	t.Logf("searched %d accessors in %s (8 workers), revoked %v", res.TokensScanned, took, res.Accessors)
	if took > 20*time.Second {
		t.Errorf("searching %d accessors took %s, want under 20s", res.TokensScanned, took)
	}
	if res.TokensScanned < n || len(res.Accessors) != 1 {
		t.Errorf("result %+v: want >= %d scanned and exactly the one matching token revoked", res, n)
	}
	if slices.Contains(res.Accessors, "") {
		t.Error("empty accessor")
	}
}
