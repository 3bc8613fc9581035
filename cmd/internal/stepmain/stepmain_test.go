package stepmain

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes/fake"

	"parry.dev/parry/internal/step"
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
