package stack_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/stack"
)

var update = flag.Bool("update", false, "rewrite config/"+stack.ManifestsFile)

// The committed config/ must hold what the steps' specs render to: one
// ServiceAccount, ClusterRole (with exactly the declared rules), binding and
// Knative Service per step.
func TestManifestsAreCurrent(t *testing.T) {
	got, err := stack.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "config", stack.ManifestsFile)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("config/%s is stale (%v): go test ./internal/stack -run Manifests -update", stack.ManifestsFile, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(got))
	kinds := map[string]int{}
	for {
		var doc struct {
			Kind  string
			Rules []struct{ Verbs []string }
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		kinds[doc.Kind]++
		for _, r := range doc.Rules {
			for _, v := range r.Verbs {
				if v == "*" || strings.Contains(v, "escalate") {
					t.Fatalf("a step asks for verb %q", v)
				}
			}
		}
	}
	n := len(stack.Steps())
	if kinds["ServiceAccount"] != n || kinds["ClusterRole"] != n || kinds["Service"] != n || kinds["SinkBinding"] != 1 {
		t.Fatalf("rendered kinds %v, want %d of each per step", kinds, n)
	}
}
