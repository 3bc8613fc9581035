package revoke_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// The Vault set-up of functions/revoke/README.md, done once per test binary:
// jwt auth trusting the cluster's service-account issuer, a database secrets
// engine at database/ against the environment's PostgreSQL, and the step's
// own policy from policy.hcl.
const (
	jwtMount     = "jwt"
	dbMount      = "database"
	revokePolicy = "parry-revoke"
)

type infra struct {
	env  *devenv.Env
	kube *kubernetes.Clientset
	root *vaultapi.Client
}

func setup(t *testing.T) *infra {
	t.Helper()
	env := devenv.Require(t)
	kube, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	root := vaultClient(t, env.VaultAddr, env.VaultToken)
	once.Do(func() { onceErr = configureVault(root, env) })
	if onceErr != nil {
		t.Fatalf("configuring Vault: %v", onceErr)
	}
	return &infra{env: env, kube: kube, root: root}
}

// Vault is configured once per test binary (the servers are shared by its
// tests; every test creates its own namespace, roles and policies).
var (
	once    sync.Once
	onceErr error
)

func configureVault(root *vaultapi.Client, env *devenv.Env) error {
	policy, err := os.ReadFile("policy.hcl")
	if err != nil {
		return err
	}
	if err := root.Sys().PutPolicy(revokePolicy, string(policy)); err != nil {
		return err
	}
	if err := root.Sys().EnableAuthWithOptions(jwtMount, &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		return err
	}
	if _, err := root.Logical().Write("auth/"+jwtMount+"/config", map[string]any{
		"jwt_validation_pubkeys": []string{env.ServiceAccountPublicKeyPEM},
		"bound_issuer":           env.ServiceAccountIssuer,
	}); err != nil {
		return err
	}
	if err := root.Sys().Mount(dbMount, &vaultapi.MountInput{Type: "database"}); err != nil {
		return err
	}
	admin, err := url.Parse(env.PostgresDSN)
	if err != nil {
		return err
	}
	password, _ := admin.User.Password()
	_, err = root.Logical().Write(dbMount+"/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": "postgresql://{{username}}:{{password}}@" + admin.Host + "/postgres?sslmode=disable",
		"username":       admin.User.Username(),
		"password":       password,
		"allowed_roles":  "*",
	})
	return err
}

func vaultClient(t testing.TB, addr, token string) *vaultapi.Client {
	t.Helper()
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// workload is one namespace with a service account, its Vault roles, and
// pods that logged in to Vault and hold a database session each.
type workload struct {
	ns   string
	sa   string
	pods map[string]*pod
}

type pod struct {
	name, uid   string
	token       string // the pod's Vault token (test only; never logged)
	user, pass  string // its database credential
	dbRole      string
	session     *pgx.Conn
	annotations map[string]string
}

// newWorkload creates namespace, service account "web", a jwt role mapping
// the pod claims into token metadata, one database role per pod (revocation
// statements terminate open sessions), and the pods; each pod logs in with
// a TokenRequest token bound to it, reads its credential and opens a session.
func newWorkload(t *testing.T, in *infra, names ...string) *workload {
	t.Helper()
	ctx := t.Context()
	ns, err := in.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "revoke-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = in.kube.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	w := &workload{ns: ns.Name, sa: "web", pods: map[string]*pod{}}
	if _, err := in.kube.CoreV1().ServiceAccounts(w.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	appPolicy := "app-" + w.ns
	write(t, in.root, "sys/policies/acl/"+appPolicy, map[string]any{
		"policy": fmt.Sprintf(`path "%s/creds/%s-*" { capabilities = ["read"] }`, dbMount, w.ns),
	})
	write(t, in.root, "auth/"+jwtMount+"/role/"+w.ns, map[string]any{
		"role_type":       "jwt",
		"bound_audiences": []string{"vault"},
		"user_claim":      "sub",
		"bound_subject":   "system:serviceaccount:" + w.ns + ":" + w.sa,
		// Nested claims by JSON pointer; the values land in token metadata.
		"claim_mappings": map[string]string{
			"/kubernetes.io/pod/uid":             "pod_uid",
			"/kubernetes.io/pod/name":            "pod_name",
			"/kubernetes.io/namespace":           "service_account_namespace",
			"/kubernetes.io/serviceaccount/name": "service_account_name",
		},
		"token_policies": []string{appPolicy},
		"token_ttl":      "1h",
	})
	for _, name := range names {
		p := &pod{name: name, dbRole: w.ns + "-" + name,
			// What a workload could write; revoke must never read it.
			annotations: map[string]string{"parry.dev/vault-leases": dbMount + "/creds/" + w.ns + "-" + name + "/"}}
		write(t, in.root, dbMount+"/roles/"+p.dbRole, map[string]any{
			"db_name":             "pg",
			"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
			// Dropping the role alone would leave its open sessions running.
			"revocation_statements": []string{
				`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';`,
				`DROP ROLE IF EXISTS "{{name}}";`,
			},
			"default_ttl": "1h",
		})
		created, err := in.kube.CoreV1().Pods(w.ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: p.annotations},
			Spec: corev1.PodSpec{
				ServiceAccountName: w.sa,
				NodeName:           in.env.NodeName,
				Containers:         []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.uid = string(created.UID)
		w.pods[name] = p
	}
	for _, p := range w.pods {
		eventually(t, 60*time.Second, "pod "+p.name+" Running", func() error {
			got, err := in.kube.CoreV1().Pods(w.ns).Get(ctx, p.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("phase %s", got.Status.Phase)
			}
			return nil
		})
		tr, err := in.kube.CoreV1().ServiceAccounts(w.ns).CreateToken(ctx, w.sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{
				Audiences:      []string{"vault"},
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.name, UID: k8stypes.UID(p.uid)},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		anon := vaultClient(t, in.env.VaultAddr, "")
		anon.ClearToken()
		s, err := anon.Logical().WriteWithContext(ctx, "auth/"+jwtMount+"/login", map[string]any{"role": w.ns, "jwt": tr.Status.Token})
		if err != nil {
			t.Fatalf("pod %s: jwt login: %v", p.name, err)
		}
		p.token = s.Auth.ClientToken
		if s.Auth.Metadata["pod_uid"] != p.uid || s.Auth.Metadata["service_account_name"] != w.sa {
			t.Fatalf("pod %s: token metadata %v lacks the claim mappings", p.name, s.Auth.Metadata)
		}
		creds, err := vaultClient(t, in.env.VaultAddr, p.token).Logical().ReadWithContext(ctx, dbMount+"/creds/"+p.dbRole)
		if err != nil {
			t.Fatalf("pod %s: reading its database credential: %v", p.name, err)
		}
		p.user, _ = creds.Data["username"].(string)
		p.pass, _ = creds.Data["password"].(string)
		if p.session, err = dbLogin(ctx, in.env, p.user, p.pass); err != nil {
			t.Fatalf("pod %s: database login with its fresh credential: %v", p.name, err)
		}
		t.Cleanup(func() { p.session.Close(context.Background()) })
	}
	return w
}

func write(t testing.TB, c *vaultapi.Client, path string, data map[string]any) {
	t.Helper()
	if _, err := c.Logical().Write(path, data); err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
}

// dbLogin connects to the environment's PostgreSQL as user/password.
func dbLogin(ctx context.Context, env *devenv.Env, user, password string) (*pgx.Conn, error) {
	u, err := url.Parse(env.PostgresDSN)
	if err != nil {
		return nil, err
	}
	u.User = url.UserPassword(user, password)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, u.String())
}

// alive reports whether p's credential still logs in and its open session
// still answers a query.
func alive(ctx context.Context, env *devenv.Env, p *pod) (login, session bool) {
	if c, err := dbLogin(ctx, env, p.user, p.pass); err == nil {
		login = true
		c.Close(ctx)
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	session = p.session.QueryRow(qctx, "SELECT 1").Scan(new(int)) == nil
	return login, session
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// revokerToken creates an orphan token with exactly the step's policy
// (plus Vault's default policy), as an operator would issue it.
func revokerToken(t *testing.T, in *infra, policies ...string) string {
	t.Helper()
	s, err := in.root.Auth().Token().CreateOrphan(&vaultapi.TokenCreateRequest{Policies: policies, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	return s.Auth.ClientToken
}

// createPlainPod creates a pod that runs as the namespace's default service
// account and waits until it is Running.
func createPlainPod(t *testing.T, in *infra, ns, name string) *pod {
	t.Helper()
	ctx := t.Context()
	created, err := in.kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:   in.env.NodeName,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &pod{name: name, uid: string(created.UID)}
}
