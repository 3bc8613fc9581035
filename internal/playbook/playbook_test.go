package playbook

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/step"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// testRegistry stands in for the real steps: the shapes matter here, not
// the functions.
func testRegistry() Registry {
	reg := Registry{}
	for _, s := range []step.Spec{
		{Name: "classify", Params: []step.Param{
			{Name: "threshold", Type: step.Int, Default: "40"},
			{Name: "dedupWindow", Type: step.Duration, Default: "10m"},
		}, Delivery: step.Delivery{Retry: 5, Backoff: 100 * time.Millisecond, Timeout: 10 * time.Second}},
		{Name: "isolate", Params: []step.Param{{Name: "allowEgress", Type: step.StringList}, {Name: "kernelBlock", Type: step.Bool, Default: "true"}},
			Delivery: step.Delivery{Retry: 7, Backoff: 200 * time.Millisecond, Timeout: 15 * time.Second}},
		{Name: "snapshot"}, {Name: "respawn"}, {Name: "revoke"}, {Name: "page"},
	} {
		reg[s.Name] = s
	}
	return reg
}

func TestCompileGolden(t *testing.T) {
	srcs, err := Load("testdata/golden/in")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Compile(context.Background(), srcs, testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	dir := "testdata/golden/out"
	if *update {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := out.Write(dir); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range entries {
		want = append(want, e.Name())
	}
	if got := sortedKeys(out); !slices.Equal(got, want) {
		t.Fatalf("files: got %v, golden has %v (go test -update)", got, want)
	}
	for name, data := range out {
		golden, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(golden) != string(data) {
			t.Errorf("%s differs from the golden file (go test -run Golden -update to accept):\n%s", name, data)
		}
	}
	// Determinism: the same input compiles to the same bytes.
	again, err := Compile(context.Background(), srcs, testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for name := range out {
		if string(out[name]) != string(again[name]) {
			t.Errorf("%s: two compiles differ", name)
		}
	}
	// Knative accepts every Trigger, the Broker included, as parry run loads them.
	tmp := t.TempDir()
	writeFile(t, filepath.Join(tmp, "200-broker.yaml"), brokerYAML())
	if err := out.Write(tmp); err != nil {
		t.Fatal(err)
	}
	set, err := manifest.LoadDir(context.Background(), tmp)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(set.Triggers); got != 6+1+1 {
		t.Errorf("got %d Triggers, want 8 (6 steps of chain, 1 of minimal, classify-baseline)", got)
	}
	b, err := LoadBundle(tmp)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := b.StepConfig("chain", "isolate")
	if err != nil || cfg.Params.String("allowEgress") != "dns" || cfg.Params.String("kernelBlock") != "true" || !cfg.Guard.DryRun ||
		cfg.Guard.RateIncidents != 3 || !slices.Contains(cfg.Guard.ProtectedNamespaces, "payments") || !slices.Contains(cfg.Guard.ProtectedNamespaces, "kube-system") {
		t.Errorf("StepConfig(chain, isolate) = %+v, %v", cfg, err)
	}
	if _, err := b.StepConfig("chain", "nope"); err == nil {
		t.Error("StepConfig of a step the playbook lacks: no error")
	}
}

// The shipped playbooks compile to exactly what config/ holds, and
// config/ loads as parry run loads it.
func TestShippedPlaybooksMatchConfig(t *testing.T) {
	srcs, err := Load("../../playbooks")
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) < 8 {
		t.Fatalf("%d shipped playbooks, want at least 8", len(srcs))
	}
	if _, err := manifest.LoadDir(context.Background(), "../../config"); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBundle("../../config"); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	head := "apiVersion: parry.dev/v1alpha1\nkind: Playbook\nmetadata: {name: bad}\ndescription: d\nseverity: high\n"
	match := "match:\n  - exact: {type: dev.parry.sensor.process.exec.v1}\n"
	steps := "steps:\n  - function: classify\n"
	cases := []struct{ name, in, want string }{
		{"malformed YAML", head + "match: [\n", "bad.yaml:6:1: malformed YAML"},
		{"unknown field", head + match + steps + "guardrail: {}\n", `bad.yaml:10:1: the document: unknown field "guardrail"`},
		{"nested unknown field", head + match + "steps:\n  - function: classify\n    aftre: x\n", `bad.yaml:10:5: steps[0]: unknown field "aftre"`},
		{"wrong type", head + match + steps + "guardrails: {dryRun: yes-please}\n", "bad.yaml:10:22: guardrails.dryRun: want true or false"},
		{"wrong type list", head + "match: {exact: {type: x}}\n" + steps, "bad.yaml:6:8: match: want a list"},
		{"unknown step", head + match + steps + "  - function: nuke\n    after: classify\n", `bad.yaml:10:15: unknown step "nuke"`},
		{"bad param", head + match + "steps:\n  - function: classify\n    params: {threshold: high}\n", `bad.yaml:10:25: step classify: parameter "threshold": want an integer`},
		{"unknown param", head + match + "steps:\n  - function: classify\n    params: {treshold: 3}\n", `bad.yaml:10:24: step classify has no parameter "treshold"`},
		{"cycle", head + match + steps + "  - function: isolate\n    after: snapshot\n  - function: snapshot\n    after: isolate\n", `step "isolate" is part of a cycle (isolate after snapshot after isolate)`},
		{"unreachable", head + match + steps + "  - function: isolate\n    after: nothing\n", `bad.yaml:11:12: after "nothing": this playbook has no step named "nothing"`},
		{"no root", head + match + "steps:\n  - function: isolate\n", `bad.yaml:9:5: step "isolate" has no after`},
		{"cesql syntax", head + "match:\n  - cesql: \"type = \"\n" + steps, "bad.yaml:7:12: "},
		{"cesql panic", head + "match:\n  - cesql: \"(((\"\n" + steps, "bad.yaml:7:12: "},
		{"two dialects", head + "match:\n  - {exact: {type: a}, prefix: {type: b}}\n" + steps, "filter sets exact and prefix"},
		{"protected namespace", head + match + "  - exact: {podns: kube-system}\n" + steps, "bad.yaml:8:20: exact podns \"kube-system\" selects the protected namespace kube-system"},
		{"protected namespace prefix", head + match + "  - prefix: {podns: parry}\n" + steps, "selects the protected namespace parry-system"},
		{"protected namespace cesql", head + match + "  - cesql: \"podns = 'kube-system'\"\n" + steps, "names the protected namespace kube-system"},
		{"protected namespace under not not under not", head + match + "  - not: {not: {exact: {podns: kube-system}}}\n" + steps, "selects the protected namespace kube-system"},
		{"bad severity", strings.Replace(head, "high", "urgent", 1) + match + steps, `bad.yaml:5:11: severity "urgent"`},
		{"bad signal", head + match + "sensor: {signals: [kexec]}\n" + steps, `bad.yaml:8:9: sensor: signals "kexec"`},
		{"bad when", head + match + steps + "  - function: snapshot\n    after: classify\n    when: maybe\n", `when "maybe"`},
		{"duplicate function", head + match + steps + "  - function: classify\n", `function "classify" already runs`},
		{"empty value", head + "match:\n  - exact: {type: \"\"}\n" + steps, "the value is empty"},
		{"bad rate", head + match + steps + "guardrails: {rateLimit: {incidents: 0, per: soon}}\n", "rateLimit.incidents must be at least 1"},
		{"respawn without isolate", head + match + steps + "  - function: snapshot\n    after: classify\n  - function: respawn\n    after: snapshot\n",
			`bad.yaml:12:5: step "respawn" respawns a pod that no isolate step quarantines`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "bad.yaml")
			writeFile(t, file, []byte(c.in))
			srcs, err := Load(file)
			var out Output
			if err == nil {
				out, err = Compile(context.Background(), srcs, testRegistry())
			}
			if err == nil {
				t.Fatalf("accepted:\n%s", c.in)
			}
			if out != nil {
				t.Errorf("output despite errors")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error does not contain %q:\n%v", c.want, err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, file+":") {
					t.Errorf("error line without file:line:col: %q", line)
				}
			}
		})
	}
}

func TestExcludingProtectedNamespacesIsFine(t *testing.T) {
	y := "apiVersion: parry.dev/v1alpha1\nkind: Playbook\nmetadata: {name: ok}\ndescription: d\nseverity: high\n" +
		"match:\n  - exact: {type: t}\n  - not: {any: [{exact: {podns: kube-system}}, {cesql: \"podns = 'parry-system'\"}]}\nsteps: [{function: classify}]\n"
	srcs, err := Parse("ok.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if errs := Validate(srcs, testRegistry()); len(errs) > 0 {
		t.Fatal(errs)
	}
}

func TestDuplicateNames(t *testing.T) {
	dir := t.TempDir()
	y := "apiVersion: parry.dev/v1alpha1\nkind: Playbook\nmetadata: {name: same}\ndescription: d\nseverity: high\nmatch: [{exact: {type: t}}]\nsteps: [{function: classify}]\n"
	writeFile(t, filepath.Join(dir, "a.yaml"), []byte(y))
	writeFile(t, filepath.Join(dir, "b.yaml"), []byte(y))
	srcs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	errs := Validate(srcs, testRegistry())
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "b.yaml:3:18: playbook \"same\" is also defined at") {
		t.Fatalf("got %v", errs)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	for _, file := range []string{"testdata/golden/in/chain.yaml", "testdata/golden/in/minimal.yaml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("match: [{cesql: \"(((\"}]"))
	f.Add([]byte("steps: [{function: a, after: b}, {function: b, after: a}]"))
	reg := testRegistry()
	f.Fuzz(func(t *testing.T, data []byte) {
		srcs, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		out, err := Compile(context.Background(), srcs, reg)
		if err == nil && len(srcs) > 0 && out == nil {
			t.Fatal("no error and no output")
		}
	})
}
