package main_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"parry.dev/parry/internal/manifest"
)

func runParry(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

func TestPlaybookValidateShipped(t *testing.T) {
	out, stderr, code := runParry(t, "playbook", "validate", "../../playbooks")
	if code != 0 || !strings.Contains(out, "playbooks valid") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
}

var positionRE = regexp.MustCompile(`^[^:]+\.yaml:\d+:\d+: `)

func TestPlaybookBadInputWritesNothing(t *testing.T) {
	in := t.TempDir()
	good, err := os.ReadFile("../../playbooks/ptrace.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(in, "good.yaml"), good)
	bad := strings.Replace(string(good), "  - function: respawn\n    after: snapshot\n", "  - function: respawn\n    after: snapshot\n  - function: nuke\n    after: classify\n", 1)
	bad = strings.Replace(bad, "name: ptrace", "name: ptrace-bad", 1)
	bad = strings.Replace(bad, "severity: high", "severity: high\nsevrity: low", 1)
	writeFile(t, filepath.Join(in, "bad.yaml"), []byte(bad))

	for _, args := range [][]string{{"playbook", "validate", in}, {"playbook", "compile", "--out", filepath.Join(in, "out"), in}} {
		out, stderr, code := runParry(t, args...)
		if code != 1 {
			t.Errorf("%v: exit %d, want 1\n%s%s", args, code, out, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		var positioned int
		for _, l := range lines {
			if positionRE.MatchString(l) {
				positioned++
			}
		}
		if positioned == 0 || !strings.Contains(stderr, `unknown field "sevrity"`) {
			t.Errorf("%v: no file:line:col errors:\n%s", args, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(in, "out")); !os.IsNotExist(err) {
		t.Errorf("compile of bad input wrote %s", filepath.Join(in, "out"))
	}
	// Fix the unknown field: the unknown step is still reported.
	writeFile(t, filepath.Join(in, "bad.yaml"), []byte(strings.Replace(bad, "sevrity: low\n", "", 1)))
	_, stderr, code := runParry(t, "playbook", "compile", "--out", filepath.Join(in, "out"), in)
	if code != 1 || !regexp.MustCompile(`bad\.yaml:\d+:\d+: unknown step "nuke"`).MatchString(stderr) {
		t.Errorf("exit %d:\n%s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(in, "out")); !os.IsNotExist(err) {
		t.Errorf("compile of bad input wrote output")
	}
	if _, _, code := runParry(t, "playbook"); code != 2 {
		t.Errorf("parry playbook without a subcommand: exit %d, want 2", code)
	}
	// The control: without the bad file the same command writes the output
	// where the checks above found none.
	if err := os.Remove(filepath.Join(in, "bad.yaml")); err != nil {
		t.Fatal(err)
	}
	if o, stderr, code := runParry(t, "playbook", "compile", "--out", filepath.Join(in, "out"), in); code != 0 {
		t.Fatalf("compile of the good playbook alone: exit %d\n%s%s", code, o, stderr)
	}
	if _, err := os.Stat(filepath.Join(in, "out", "400-playbook-ptrace.yaml")); err != nil {
		t.Fatalf("compile of the good playbook alone wrote no Triggers: %v", err)
	}
}

func TestPlaybookCompileLoadsAsParryRunDoes(t *testing.T) {
	out := t.TempDir()
	if o, stderr, code := runParry(t, "playbook", "compile", "--out", out, "../../playbooks"); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, o, stderr)
	}
	broker, err := os.ReadFile("../../config/200-broker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(out, "200-broker.yaml"), broker)
	set, err := manifest.LoadDir(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Triggers) < 9 {
		t.Errorf("%d Triggers", len(set.Triggers))
	}
	for _, name := range []string{"300-sensor-filters.yaml", "310-playbooks.yaml", "400-playbook-reverse-shell.yaml"} {
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("../../config", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from config/: run parry playbook compile --out config/ playbooks/", name)
		}
	}
}
