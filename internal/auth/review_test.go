package auth_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// resign re-signs a service-account token's claims, changed by edit, with
// the test environment's signing key: how a token that expired, or one not
// yet valid, is made without waiting.
func resign(t *testing.T, env *devenv.Env, token string, edit func(map[string]any)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	edit(claims)
	body, _ := json.Marshal(claims)
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(body)
	keyPEM, err := os.ReadFile(filepath.Join(env.Dir, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	var key *ecdsa.PrivateKey
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		key = k.(*ecdsa.PrivateKey)
	} else {
		t.Fatalf("the signing key: %v", err)
	}
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TokenReview for one audience on the real API server: a fresh token of
// that audience is accepted (the positive control, and re-signed unchanged
// it still is, so the re-signing is sound); an expired one, one for another
// audience and garbage are rejected; an unreachable API server fails closed.
func TestTokenReviewAcceptsOnlyLiveTokensOfItsAudience(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	const ns, account, audience = "auth-review", "caller", "parry-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: account}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mint := func(aud string) string {
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, account, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{aud}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	review := auth.NewTokenReview(cs, audience, time.Minute)
	good := mint(audience)
	id, err := review.Authenticate(ctx, good)
	if err != nil || id.Username != auth.ServiceAccountUser(ns, account) {
		t.Fatalf("a fresh token: %+v, %v", id, err)
	}
	if _, err := review.Authenticate(ctx, good); err != nil || review.Stats.CacheHits.Load() != 1 {
		t.Fatalf("the same token again: %v, %d cache hits, want 1", err, review.Stats.CacheHits.Load())
	}
	if _, err := review.Authenticate(ctx, resign(t, env, good, func(map[string]any) {})); err != nil {
		t.Fatalf("the token re-signed unchanged was rejected, so the re-signing proves nothing: %v", err)
	}
	past := time.Now().Add(-2 * time.Hour).Unix()
	expired := resign(t, env, good, func(c map[string]any) { c["iat"], c["nbf"], c["exp"] = past-600, past-600, past })
	for name, tok := range map[string]string{
		"expired":              expired,
		"for another audience": mint("parry-elsewhere"),
		"not a token":          "garbage",
		"a token cut short":    good[:len(good)-10],
	} {
		var rejected *auth.Rejected
		if _, err := review.Authenticate(ctx, tok); !errors.As(err, &rejected) {
			t.Errorf("%s: %v, want rejected", name, err)
		}
	}
	if _, err := review.Authenticate(ctx, ""); !errors.Is(err, auth.ErrNoToken) {
		t.Errorf("no token: %v", err)
	}
	down := auth.NewTokenReview(kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second}), audience, time.Minute)
	var unavailable *auth.Unavailable
	if _, err := down.Authenticate(ctx, mint(audience)); !errors.As(err, &unavailable) || down.Stats.Unavailable.Load() != 1 {
		t.Fatalf("TokenReview unreachable: %v, want Unavailable, counted", err)
	}
}

// SubjectAccessReview follows RBAC on parry's virtual resources, by name.
func TestSubjectAccessReviewFollowsRBAC(t *testing.T) {
	env := devenv.Require(t)
	cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	user := auth.Identity{Username: auth.ServiceAccountUser("auth-sar", "isolate"), Groups: []string{"system:serviceaccounts"}}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "auth-sar-block"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"parry.dev"}, Resources: []string{"sensors/block"}, ResourceNames: []string{"node-a"}, Verbs: []string{"update"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "auth-sar-block"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "auth-sar-block"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "auth-sar", Name: "isolate"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	block := func(node string) auth.Attributes {
		return auth.Attributes{Verb: "update", Group: "parry.dev", Resource: "sensors", Subresource: "block", Name: node}
	}
	// A binding applies once the API server's RBAC cache has it: wait
	// with a review that is not cached.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ok, _, err := auth.NewSubjectAccessReview(cs, 0, 0).Authorize(ctx, user, block("node-a"))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the binding never applied")
		}
	}
	sar := auth.NewSubjectAccessReview(cs, time.Minute, time.Minute)
	if ok, reason, err := sar.Authorize(ctx, user, block("node-a")); !ok || err != nil {
		t.Fatalf("granted block on node-a: %v %q %v", ok, reason, err)
	}
	unblock := block("node-a")
	unblock.Subresource = "unblock"
	for name, a := range map[string]auth.Attributes{"another node": block("node-b"), "unblock": unblock} {
		if ok, reason, err := sar.Authorize(ctx, user, a); ok || err != nil || !strings.Contains(reason, "may not update sensors.parry.dev/") {
			t.Errorf("%s: %v %q %v, want denied with a reason naming the grant", name, ok, reason, err)
		}
	}
}

// The local token file: made 0600, kept across starts (a user added later
// gets a token, the others keep theirs), refused when others can read it,
// and compared whole.
func TestTokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	first, err := auth.EnsureTokenFile(path, "sensor")
	if err != nil {
		t.Fatal(err)
	}
	again, err := auth.EnsureTokenFile(path, "sensor", "operator")
	if err != nil || again["sensor"] != first["sensor"] || again["operator"] == "" {
		t.Fatalf("tokens after a second start: %v, %v", again, err)
	}
	f, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := f.Authenticate(t.Context(), again["operator"]); err != nil || id.Username != "operator" {
		t.Fatalf("the operator's token: %+v %v", id, err)
	}
	var rejected *auth.Rejected
	if _, err := f.Authenticate(t.Context(), again["operator"][:40]); !errors.As(err, &rejected) {
		t.Fatalf("a prefix of a token: %v, want rejected", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadTokenFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a token file others can read: %v, want refused naming the fix", err)
	}
}
