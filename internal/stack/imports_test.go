package stack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"parry.dev/parry/internal/stack"
)

const module = "parry.dev/parry"

// goList runs go list over the module and returns, per package, its imports
// (or, with -deps, its dependencies).
func goList(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	pkgs := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, imports, _ := strings.Cut(line, ":")
		pkgs[name] = strings.Fields(imports)
	}
	return pkgs
}

// agent is the sensor's own code: what only the sensor, the assembler and
// the mains may link. sensor/api, sensor/client and sensor/filters are
// libraries.
func agent(pkg string) bool {
	if !strings.HasPrefix(pkg, module+"/sensor") {
		return false
	}
	return !slices.Contains([]string{module + "/sensor/api", module + "/sensor/client", module + "/sensor/filters"}, pkg)
}

func step(pkg string) bool { return strings.HasPrefix(pkg, module+"/functions/") }

// The import rule of docs/design.md: assemblers on top (cmd/, the tests,
// internal/stack), libraries at the bottom. No library imports the sensor
// agent or a step, no step imports another step or the agent, and the
// agent imports no step.
func TestImportRule(t *testing.T) {
	for pkg, imports := range goList(t, "./...") {
		assembler := strings.HasPrefix(pkg, module+"/cmd/") || strings.HasPrefix(pkg, module+"/tests/") || pkg == module+"/internal/stack"
		if assembler {
			continue
		}
		for _, imp := range imports {
			switch {
			case agent(imp) && !agent(pkg):
				t.Errorf("%s imports the sensor agent %s: only cmd/, tests/ and internal/stack may (use sensor/api or sensor/client)", pkg, imp)
			case step(imp) && !(step(pkg) && strings.HasPrefix(imp, pkg)):
				t.Errorf("%s imports the step %s: only cmd/, tests/ and internal/stack may", pkg, imp)
			}
		}
	}
}

// A step's image links what the step needs: no eBPF library, no BPF
// object, no sensor agent.
func TestStepImagesDoNotLinkTheSensor(t *testing.T) {
	var mains []string
	for _, d := range stack.Steps() {
		mains = append(mains, "./cmd/"+d.Spec.Name)
	}
	cmd := exec.Command("go", append([]string{"list", "-deps"}, mains...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %v: %v (every step in stack.Steps needs its main at cmd/<name>)", mains, err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"/internal/step") {
		t.Fatalf("go list -deps %v lists no internal/step: the check would pass vacuously", mains)
	}
	for _, dep := range deps {
		if strings.HasPrefix(dep, "github.com/cilium/ebpf") || agent(dep) {
			t.Errorf("a step's image depends on %s", dep)
		}
	}
}

// Environment variables are read by the mains only: a library takes what
// it needs as a parameter, so the same code runs under parry run, in a
// Knative Service and in a test without ambient configuration.
func TestEnvironmentIsReadInMainsOnly(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{.Name}}|{{.Dir}}|{{join .GoFiles ","}}`, "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	read := regexp.MustCompile(`\b(os\.(Getenv|LookupEnv|Environ)|syscall\.Getenv)\(`)
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		pkg, name, dir, files := parts[0], parts[1], parts[2], parts[3]
		if name == "main" || strings.HasPrefix(pkg, module+"/tests/") || strings.HasPrefix(pkg, module+"/cmd/") || files == "" {
			continue
		}
		for _, f := range strings.Split(files, ",") {
			src, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			checked++
			for i, l := range strings.Split(string(src), "\n") {
				if read.MatchString(l) {
					t.Errorf("%s/%s:%d reads the environment: take the value as a parameter and read it in the main", pkg, f, i+1)
				}
			}
		}
	}
	if checked < 50 {
		t.Fatalf("checked only %d files: the listing is wrong", checked)
	}
}
