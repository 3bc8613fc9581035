package devenv_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"parry.dev/parry/tests/devenv"
)

// vault sends an authenticated request to the dev server and decodes the
// JSON answer; any status other than 2xx fails the test.
func vault(t *testing.T, env *devenv.Env, method, path string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, env.VaultAddr+"/v1/"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", env.VaultToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("vault %s %s: reading the answer: %v", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("vault %s %s: %s: %s", method, path, resp.Status, raw)
	}
	out := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("vault %s %s: %v: %s", method, path, err, raw)
		}
	}
	return out
}

// login connects to the environment's PostgreSQL as user/password over TCP.
func login(ctx context.Context, env *devenv.Env, user, password string) (*pgx.Conn, error) {
	u, err := url.Parse(env.PostgresDSN)
	if err != nil {
		return nil, err
	}
	u.User = url.UserPassword(user, password)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, u.String())
}

// Vault's database engine, configured against the environment's PostgreSQL,
// issues a credential that logs in; revoking its lease ends its sessions and
// makes a new login fail.
func TestVaultDatabaseCredentialLogsInUntilRevoked(t *testing.T) {
	env := devenv.Require(t)
	ctx := t.Context()
	mount := fmt.Sprintf("db-%d", time.Now().UnixNano())
	vault(t, env, "POST", "sys/mounts/"+mount, map[string]any{"type": "database"})
	t.Cleanup(func() { // t.Context() is done by now: vault() cannot be used
		req, err := http.NewRequest("DELETE", env.VaultAddr+"/v1/sys/mounts/"+mount, nil)
		if err != nil {
			t.Error(err)
			return
		}
		req.Header.Set("X-Vault-Token", env.VaultToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("unmounting %s: %v", mount, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Errorf("unmounting %s: %s", mount, resp.Status)
		}
	})
	admin, err := url.Parse(env.PostgresDSN)
	if err != nil {
		t.Fatal(err)
	}
	adminPassword, ok := admin.User.Password()
	if !ok {
		t.Fatalf("PostgresDSN %s carries no password", env.PostgresDSN)
	}
	vault(t, env, "POST", mount+"/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": "postgresql://{{username}}:{{password}}@" + admin.Host + "/postgres?sslmode=disable",
		"username":       admin.User.Username(),
		"password":       adminPassword,
		"allowed_roles":  "app",
	})
	vault(t, env, "POST", mount+"/roles/app", map[string]any{
		"db_name":             "pg",
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		// Dropping the role alone would leave its open sessions running.
		"revocation_statements": []string{
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';`,
			`DROP ROLE IF EXISTS "{{name}}";`,
		},
		"default_ttl": "1h",
		"max_ttl":     "2h",
	})

	creds := vault(t, env, "GET", mount+"/creds/app", nil)
	leaseID, _ := creds["lease_id"].(string)
	data, _ := creds["data"].(map[string]any)
	user, _ := data["username"].(string)
	password, _ := data["password"].(string)
	if leaseID == "" || user == "" || password == "" {
		t.Fatalf("no credential in %v", creds)
	}

	session, err := login(ctx, env, user, password)
	if err != nil {
		t.Fatalf("login with the issued credential: %v", err)
	}
	defer session.Close(context.Background())
	var current string
	if err := session.QueryRow(ctx, "SELECT current_user").Scan(&current); err != nil || current != user {
		t.Fatalf("current_user = %q (%v), want %q", current, err, user)
	}

	vault(t, env, "PUT", "sys/leases/revoke", map[string]any{"lease_id": leaseID})

	if conn, err := login(ctx, env, user, password); err == nil {
		conn.Close(ctx)
		t.Fatal("login still works after the lease was revoked")
	} else if !strings.Contains(err.Error(), "password authentication failed") {
		t.Logf("login after revocation failed as expected, with: %v", err)
	}
	if err := session.QueryRow(ctx, "SELECT 1").Scan(new(int)); err == nil {
		t.Fatal("the session opened before revocation still runs queries")
	}
}
