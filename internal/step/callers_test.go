package step_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpserver/servertest"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// A step's Service takes events only from parry's Triggers, as Knative's
// broker filter delivers them: with a token of a Trigger's OIDC identity
// for the Service's audience, reviewed by the real API server. Everyone
// else is refused before the handler runs; the positive control proves a
// Trigger's delivery reaches it.
func TestServeTakesEventsOnlyFromParrysTriggers(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	audience := step.ServiceAudience("parry-callers", "isolate")
	trigger := "isolate-miner" + step.TriggerIdentitySuffix
	for ns, accounts := range map[string][]string{"parry-callers": {trigger, "web"}, "elsewhere": {trigger}} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, a := range accounts {
			if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: a}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	token := func(ns, account, audience string) string {
		t.Helper()
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, account, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}

	handled := 0
	h := func(context.Context, cloudevents.Event) (*cloudevents.Event, error) { handled++; return nil, nil }
	callers := step.TriggersIn("parry-callers", auth.NewTokenReview(cs, audience, time.Minute))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := step.NewServer(h, callers, nil, zerolog.Nop(), servertest.Short)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	post := func(tok string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+ln.Addr().String()+"/", strings.NewReader("{}"))
		for k, v := range map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "e1", "Ce-Source": "s", "Ce-Type": events.TypeIncidentOpened, "Content-Type": "application/json"} {
			req.Header.Set(k, v)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
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
		token string
		code  int
		want  string
	}{
		"no token":                        {"", http.StatusUnauthorized, "no bearer token"},
		"a token for another audience":    {token("parry-callers", trigger, "parry-sensor"), http.StatusUnauthorized, "token rejected"},
		"not a token":                     {"not-a-token", http.StatusUnauthorized, "token rejected"},
		"a workload of parry's namespace": {token("parry-callers", "web", audience), http.StatusForbidden, "system:serviceaccount:parry-callers:web may not deliver"},
		"a Trigger-like name elsewhere":   {token("elsewhere", trigger, audience), http.StatusForbidden, "may not deliver"},
	} {
		if code, body := post(c.token); code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", name, code, body, c.code, c.want)
		}
	}
	if handled != 0 {
		t.Fatalf("a refused caller reached the handler %d times", handled)
	}
	if code, body := post(token("parry-callers", trigger, audience)); code != http.StatusAccepted || handled != 1 {
		t.Fatalf("a Trigger's delivery: %d %s, handled %d times", code, body, handled)
	}

	// TokenReview unreachable: refused with 503 (the broker retries),
	// never let through.
	down := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second})
	closed := step.NewServer(h, step.TriggersIn("parry-callers", auth.NewTokenReview(down, audience, time.Minute)), nil, zerolog.Nop(), servertest.Short)
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	go closed.Serve(ln2)
	t.Cleanup(func() { closed.Close() })
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+ln2.Addr().String()+"/", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token("parry-callers", trigger, audience))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || handled != 1 {
		t.Fatalf("TokenReview unreachable: %d, handled %d times; want 503 and no delivery", resp.StatusCode, handled)
	}
}
