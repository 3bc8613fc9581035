package journalservice_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/journalservice"
	"parry.dev/parry/internal/journalservice/journaltest"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// fixture is a journal service on a database of the test's own, with the
// test environment's API server reviewing tokens and RBAC.
type fixture struct {
	env   *devenv.Env
	cs    kubernetes.Interface
	pool  *pgxpool.Pool
	store *journal.Postgres
	svc   *journalservice.Service
	url   string
	// trigger is the journal's Trigger's delivery token.
	trigger string
}

func start(t testing.TB, configure ...func(*journalservice.Config)) *fixture {
	t.Helper()
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	pool, err := clients.Postgres(t.Context(), env.Database(t, "journalsvc"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := journal.OpenPostgres(t.Context(), pool)
	if err != nil {
		t.Fatal(err)
	}
	cfg := journalservice.Config{
		Recorder: store, Reader: store,
		Callers:   journalservice.TriggerCallers(auth.NewTokenReview(cs, journalservice.DeliveryAudience, time.Minute)),
		ReadAuthn: auth.NewTokenReview(cs, journalservice.Audience, time.Minute),
		// No caching of decisions: tests grant and watch the answer change.
		ReadAuthz: auth.NewSubjectAccessReview(cs, 0, 0),
		Log:       zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for _, c := range configure {
		c(&cfg)
	}
	f := &fixture{env: env, cs: cs, pool: pool, store: store, trigger: journaltest.TriggerToken(t, cs)}
	f.svc, f.url = serve(t, cfg)
	return f
}

// serve runs a service of cfg on a loopback port until the test ends.
func serve(t testing.TB, cfg journalservice.Config) (*journalservice.Service, string) {
	t.Helper()
	svc, err := journalservice.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return svc, "http://" + ln.Addr().String()
}

// count is how many rows the journal holds, and how many with id.
func (f *fixture) count(t *testing.T, id string) (all, withID int) {
	t.Helper()
	if err := f.pool.QueryRow(t.Context(), `SELECT COUNT(*), COUNT(*) FILTER (WHERE id = $1) FROM journal_events`, id).Scan(&all, &withID); err != nil {
		t.Fatal(err)
	}
	return all, withID
}

var bindings atomic.Int64

// shippedRoles creates the ClusterRoles config/620-journal.yaml ships for
// readers, as shipped.
func shippedRoles(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "config", "620-journal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for doc := range bytes.SplitSeq(data, []byte("\n---\n")) {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal(doc, &role); err != nil {
			t.Fatal(err)
		}
		if role.Kind != "ClusterRole" || (role.Name != "parry-journal-reader" && role.Name != "parry-journal-metrics") {
			continue
		}
		found++
		if _, err := cs.RbacV1().ClusterRoles().Create(t.Context(), &role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if found != 2 {
		t.Fatalf("config/620-journal.yaml ships %d of the ClusterRoles parry-journal-reader and parry-journal-metrics", found)
	}
}

// grant binds the ClusterRole role to namespace/account until the test ends.
func grant(t *testing.T, cs kubernetes.Interface, role, namespace, account string) {
	t.Helper()
	name := fmt.Sprintf("journal-test-%d-%d", time.Now().UnixNano(), bindings.Add(1))
	_, err := cs.RbacV1().ClusterRoleBindings().Create(t.Context(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: namespace, Name: account}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// get is a GET of path with token ("" for none): status, body, headers.
func get(t *testing.T, url, token string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
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
	return resp.StatusCode, string(b), resp.Header
}

// uniqueNamespace is a namespace name no other test uses.
func uniqueNamespace(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1_000_000_000)
}
