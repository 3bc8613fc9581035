package sensor_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/podcgroup"
)

// call makes one request to the sensor's API with token ("" sends none)
// and returns the status and the body.
func call(t *testing.T, s *sensor.Sensor, method, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.RecorderAddr()+path, nil)
	if err != nil {
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
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func suffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// The sensor's API in a cluster: tokens reviewed by the real API server for
// the audience parry-sensor, each route authorized by SubjectAccessReview
// on sensors.parry.dev/<subresource> named after the node, and blocks of
// protected or unplaceable pods refused whoever asks.
func TestAPIAuthInCluster(t *testing.T) {
	requireKernel(t)
	env := devenv.Require(t)
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	sfx := suffix()
	ns := "sensor-auth-" + sfx
	grant := func(sub string) ([]rbacv1.PolicyRule, authorizationv1.ResourceAttributes) {
		return []rbacv1.PolicyRule{{APIGroups: []string{api.Group}, Resources: []string{api.Resource + "/" + sub}, Verbs: []string{api.VerbOf(sub)}}},
			authorizationv1.ResourceAttributes{Group: api.Group, Resource: api.Resource, Subresource: sub, Verb: api.VerbOf(sub), Name: env.NodeName}
	}
	// Two accounts shaped as config/ grants them: isolate's may block,
	// snapshot's may read history.
	isolateSA, snapshotSA := "isolate-"+sfx, "snapshot-"+sfx
	rules, granted := grant(api.SubresourceBlock)
	env.BoundServiceAccount(t, ns, isolateSA, rules, granted)
	rules, granted = grant(api.SubresourceHistory)
	env.BoundServiceAccount(t, ns, snapshotSA, rules, granted)
	token := func(sa, audience string) string {
		tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	isolate, snapshot := token(isolateSA, api.Audience), token(snapshotSA, api.Audience)
	wrongAudience := token(isolateSA, "eventing.knative.dev/broker/parry-system/parry")

	// Pods on the sensor's node: a workload, and pods of the cluster and
	// of parry, each with the cgroup the kubelet would make.
	pod := func(namespace, name string) *podcgroup.Pod {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		// A new namespace's default ServiceAccount comes a moment after it.
		var p *corev1.Pod
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			p, err = admin.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.PodSpec{NodeName: env.NodeName, Containers: []corev1.Container{{Name: "app", Image: "x"}}}}, metav1.CreateOptions{})
			if err == nil || !strings.Contains(err.Error(), "service account") || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			admin.CoreV1().Pods(namespace).Delete(context.Background(), name, *metav1.NewDeleteOptions(0))
		})
		return podcgroup.NewFor(t, string(p.UID))
	}
	victim := pod(ns, "victim")
	system := pod("kube-system", "sensor-auth-"+sfx)
	own := pod("parry-system", "sensor-auth-"+sfx)

	s := startSensor(t, sensor.Config{Kubeconfig: env.Kubeconfig, Node: env.NodeName, FiltersPath: filtersFile(t, ""), HealthInterval: time.Hour})
	defer s.UnblockPod(victim.UID)

	// The informer must know the pods before a block can be placed:
	// until then it is refused as unattributable, which this waits out.
	var code int
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, body = call(t, s, http.MethodPut, api.BlockPath(victim.UID), isolate)
		if code != http.StatusConflict || !strings.Contains(body, "cannot attribute") || time.Now().After(deadline) {
			break
		}
	}
	t.Run("isolate's account blocks a workload", func(t *testing.T) {
		if code != http.StatusOK {
			t.Fatalf("block as isolate: %d %s", code, body)
		}
		var res api.BlockResult
		if err := json.Unmarshal([]byte(body), &res); err != nil || !res.Blocked {
			t.Fatalf("block result %s: %v", body, err)
		}
		ids, err := s.Blocked()
		if err != nil || !slices.Contains(ids, res.CgroupID) {
			t.Fatalf("blocked cgroups %v (%v), want %d", ids, err, res.CgroupID)
		}
		addr := podcgroup.Listen(t, "127.0.0.1:0")
		out, err := victim.Run(t, "/usr/bin/bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d", addr.Port))
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("connect from the blocked pod: err %v, output %q", err, out)
		}
	})
	t.Run("no token is 401", func(t *testing.T) {
		for _, r := range [][2]string{
			{http.MethodPut, api.BlockPath(victim.UID)}, {http.MethodDelete, api.BlockPath(victim.UID)},
			{http.MethodGet, api.PodPath(victim.UID)}, {http.MethodGet, api.RoutePods}, {http.MethodGet, api.RouteBlocked},
			{http.MethodGet, api.BinariesPath(victim.UID)}, {http.MethodGet, api.CgroupPath(1)}, {http.MethodGet, api.RouteMetrics},
		} {
			if code, body := call(t, s, r[0], r[1], ""); code != http.StatusUnauthorized || !strings.Contains(body, "no bearer token") {
				t.Errorf("%s %s without a token: %d %s", r[0], r[1], code, body)
			}
		}
		if code, _ := call(t, s, http.MethodGet, api.RouteHealth, ""); code != http.StatusOK {
			t.Errorf("/healthz without a token: %d, want 200 (the kubelet's probe has none)", code)
		}
	})
	t.Run("a token for another audience is 401", func(t *testing.T) {
		if code, body := call(t, s, http.MethodPut, api.BlockPath(victim.UID), wrongAudience); code != http.StatusUnauthorized {
			t.Errorf("block with a Broker token: %d %s", code, body)
		}
		if code, body := call(t, s, http.MethodPut, api.BlockPath(victim.UID), "not-a-token"); code != http.StatusUnauthorized {
			t.Errorf("block with garbage: %d %s", code, body)
		}
	})
	t.Run("an account without the grant is 403", func(t *testing.T) {
		code, body := call(t, s, http.MethodPut, api.BlockPath(victim.UID), snapshot)
		if code != http.StatusForbidden || !strings.Contains(body, "update sensors.parry.dev/block "+env.NodeName) || !strings.Contains(body, snapshotSA) {
			t.Errorf("block as snapshot: %d %s", code, body)
		}
		if code, body := call(t, s, http.MethodDelete, api.BlockPath(victim.UID), isolate); code != http.StatusForbidden || !strings.Contains(body, "sensors.parry.dev/unblock") {
			t.Errorf("unblock as isolate: %d %s", code, body)
		}
		if code, body := call(t, s, http.MethodGet, api.PodPath(victim.UID), isolate); code != http.StatusForbidden || !strings.Contains(body, "sensors.parry.dev/history") {
			t.Errorf("history as isolate: %d %s", code, body)
		}
		// snapshot's grant works: the history route answers it (404:
		// the cgroup ran nothing yet, or 200).
		if code, body := call(t, s, http.MethodGet, api.RoutePods, snapshot); code != http.StatusOK {
			t.Errorf("pods as snapshot: %d %s", code, body)
		}
		if ids, _ := s.Blocked(); len(ids) != 1 {
			t.Errorf("blocked cgroups %v: the refused requests changed something", ids)
		}
	})
	t.Run("protected pods are never blocked", func(t *testing.T) {
		for _, p := range []*podcgroup.Pod{system, own} {
			code, body := call(t, s, http.MethodPut, api.BlockPath(p.UID), isolate)
			if code != http.StatusConflict || !strings.Contains(body, "protected namespace") {
				t.Errorf("block of %s: %d %s", p.UID, code, body)
			}
		}
		if ids, _ := s.Blocked(); len(ids) != 1 {
			t.Errorf("blocked cgroups %v, want only the workload's", ids)
		}
	})
	t.Run("an unattributable pod is refused with the reason", func(t *testing.T) {
		stray := podcgroup.New(t) // a cgroup the API server lists no pod for
		code, body := call(t, s, http.MethodPut, api.BlockPath(stray.UID), isolate)
		if code != http.StatusConflict || !strings.Contains(body, "cannot attribute pod "+stray.UID+" to a namespace, so it cannot check it is not protected") {
			t.Errorf("block of an unknown UID: %d %s", code, body)
		}
	})
}

// fallback authenticates testToken as testOperator and "other-token" as
// test:other, and hands every other token to next.
type fallback struct{ next auth.Authenticator }

func (f fallback) Authenticate(ctx context.Context, tok string) (auth.Identity, error) {
	switch tok {
	case testToken:
		return auth.Identity{Username: testOperator}, nil
	case "other-token":
		return auth.Identity{Username: "test:other"}, nil
	}
	return f.next.Authenticate(ctx, tok)
}

// operatorFirst allows testOperator everything and asks next about anyone
// else.
type operatorFirst struct{ next auth.Authorizer }

func (o operatorFirst) Authorize(ctx context.Context, id auth.Identity, a auth.Attributes) (bool, string, error) {
	if id.Username == testOperator {
		return true, "", nil
	}
	return o.next.Authorize(ctx, id, a)
}

// When the API server cannot be reached, the API fails closed: 503 with
// the reason, counted in /metrics.
func TestAPIAuthUnavailable(t *testing.T) {
	requireKernel(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	down, err := kubernetes.NewForConfig(&rest.Config{Host: "http://" + closed, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := startSensor(t, sensor.Config{
		APIAuthn: fallback{auth.NewTokenReview(down, api.Audience, time.Minute)},
		APIAuthz: operatorFirst{auth.NewSubjectAccessReview(down, time.Minute, time.Second)},
	})
	uid := podcgroup.New(t).UID
	code, body := call(t, s, http.MethodPut, api.BlockPath(uid), "a-token-to-review")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "could not be reviewed") {
		t.Errorf("TokenReview unreachable: %d %s", code, body)
	}
	code, body = call(t, s, http.MethodPut, api.BlockPath(uid), "other-token")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "could not be decided") {
		t.Errorf("SubjectAccessReview unreachable: %d %s", code, body)
	}
	if ids, _ := s.Blocked(); len(ids) != 0 {
		t.Errorf("blocked %v although nobody was authorized", ids)
	}
	code, body = call(t, s, http.MethodGet, api.RouteMetrics, testToken)
	if code != http.StatusOK {
		t.Fatalf("metrics as the operator: %d %s", code, body)
	}
	for _, want := range []string{`parry_sensor_api_auth_total{result="unavailable"} 2`, `parry_sensor_api_auth_total{result="allowed"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
	// Without a cluster and without a token file, the API cannot decide
	// anything and refuses all but /healthz.
	bare, err := sensor.New(t.Context(), sensor.Config{RecorderAddr: "127.0.0.1:0", SpoolDir: "-", Node: "test-node", APIAuthn: nil}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if code, body := call(t, bare, http.MethodPut, api.BlockPath(uid), testToken); code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot authenticate") {
		t.Errorf("API without an authenticator: %d %s", code, body)
	}
	if code, _ := call(t, bare, http.MethodGet, api.RouteHealth, ""); code != http.StatusOK {
		t.Errorf("/healthz of the API without an authenticator: %d", code)
	}
}
