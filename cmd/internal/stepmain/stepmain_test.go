package stepmain

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes/fake"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/tests/devenv"
)

// Who may deliver to a step is checked unless PARRY_CALLERS says "any";
// checking needs a cluster, and a typo is an error, never "any".
func TestVerifyCallers(t *testing.T) {
	spec := step.Spec{Name: "isolate"}
	for _, c := range []struct {
		env     string
		cluster bool
		want    string // error substring; "" for none
		checks  bool
	}{
		{"", true, "", true},
		{"triggers", true, "", true},
		{"any", false, "", false},
		{"", false, "needs the API server", false},
		{"anyone", true, `PARRY_CALLERS="anyone"`, false},
	} {
		t.Setenv("PARRY_CALLERS", c.env)
		d := step.Deps{}
		if c.cluster {
			d.Kube = fake.NewClientset()
		}
		callers, err := verifyCallers(spec, d, zerolog.Nop())
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("PARRY_CALLERS=%q, cluster %v: %v, want error %q", c.env, c.cluster, err, c.want)
		}
		if (callers != nil) != c.checks {
			t.Errorf("PARRY_CALLERS=%q, cluster %v: callers checked %v, want %v", c.env, c.cluster, callers != nil, c.checks)
		}
	}
}

func TestMain(m *testing.M) { devenv.Main(m) }

// A step whose Spec says Postgres gets a pool of the database named by
// PARRY_POSTGRES_DSN, connected before the step is built; without the
// variable, or with one that does not connect, it does not start, and the
// error names the Secret or the cause, never the password. A step without
// Postgres starts without the variable.
func TestPostgresStepsNeedTheirDatabase(t *testing.T) {
	env := devenv.Require(t)
	t.Setenv("KUBECONFIG", "")
	t.Setenv("PARRY_CALLERS", "any")
	t.Setenv("PORT", "0")
	for _, c := range []struct {
		name     string
		postgres bool
		dsn      string
		want     string // error substring; "" to start
	}{
		{"missing", true, "", "step keeper keeps its state in PostgreSQL: no PostgreSQL connection string: create the Secret parry-postgres with key dsn"},
		{"unreachable", true, "postgres://parry:sekrit@127.0.0.1:1/parry?sslmode=disable&connect_timeout=2", "does not answer"},
		{"malformed", true, "postgres://parry:sekrit@[::1", "not valid"},
		{"right", true, env.PostgresDSN, ""},
		{"not a Postgres step", false, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(clients.PostgresDSNEnv, c.dsn)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			built := false
			def := step.Definition{Spec: step.Spec{Name: "keeper", Postgres: c.postgres}, New: func(ctx context.Context, d step.Deps) (step.Action, error) {
				built = true
				if c.postgres {
					if d.Postgres == nil {
						return nil, errors.New("no pool")
					}
					if err := d.Postgres.Ping(ctx); err != nil {
						return nil, err
					}
				} else if d.Postgres != nil {
					return nil, errors.New("a step without Postgres got a pool")
				}
				cancel() // built: serve, and stop at once
				return func(context.Context, *step.Request) (any, error) { return nil, nil }, nil
			}}
			err := run(ctx, def, zerolog.Nop())
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("did not start: %v", err)
			case c.want == "" && !built:
				t.Fatal("the step was not built")
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "sekrit")):
				t.Fatalf("err = %v, want %q and no password", err, c.want)
			case c.want != "" && built:
				t.Fatal("the step was built without its database")
			}
		})
	}
}
