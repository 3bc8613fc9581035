package manifest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/manifest"
)

// brokerDoc is a Broker on three lines.
const brokerDoc = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: parry, namespace: parry-system}\n"

// deepTrigger is a Broker and a Trigger whose one filter is n nots around
// an exact filter, its deepest mapping at level n+5 on line 12 (the root,
// spec, filters, the filter, n nots, exact).
func deepTrigger(n int) []byte {
	return []byte(brokerDoc + "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t, namespace: parry-system}\nspec:\n  broker: parry\n  subscriber: {uri: http://x/}\n  filters:\n    - " +
		strings.Repeat("{not: ", n) + "{exact: {type: x}}" + strings.Repeat("}", n) + "\n")
}

// Knative's validation walks a filter tree once per level: a Trigger
// nested 9,000 levels deep is refused before it, at its line, naming the
// bound; one at the bound loads.
func TestDeepTriggerIsRefusedQuickly(t *testing.T) {
	start := time.Now()
	_, err := manifest.Parse(context.Background(), "deep.yaml", deepTrigger(9000))
	took := time.Since(start)
	want := fmt.Sprintf("deep.yaml:12:%d: mappings and lists nest deeper than the limit of %d levels", 7+6*(manifest.MaxDepth+1-4), manifest.MaxDepth)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a Trigger 9,000 levels deep: got %v, want %s", err, want)
	}
	if took > time.Second {
		t.Errorf("refusing a Trigger 9,000 levels deep took %s", took)
	}
	set, err := manifest.Parse(context.Background(), "limit.yaml", deepTrigger(manifest.MaxDepth-5))
	if err != nil || len(set.Triggers) != 1 {
		t.Fatalf("a Trigger %d levels deep: %v", manifest.MaxDepth, err)
	}
	if _, err := manifest.Parse(context.Background(), "over.yaml", deepTrigger(manifest.MaxDepth-4)); err == nil || !strings.Contains(err.Error(), "limit of 64 levels") {
		t.Fatalf("a Trigger %d levels deep: got %v, want the depth refused", manifest.MaxDepth+1, err)
	}
}

// A config file over 1 MiB is refused, and LoadDir reads no more of it
// than that.
func TestLargeManifestIsRefused(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "big.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(brokerDoc + "#" + strings.Repeat("x", manifest.MaxFileBytes) + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil { // sparse: LoadDir must not read it all
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = manifest.LoadDir(context.Background(), dir)
	if want := filepath.Join(dir, "big.yaml") + ":4: the file is larger than the limit of 1048576 bytes (1 MiB)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("LoadDir with a file over 1 MiB: got %v, want %s", err, want)
	}
	at := brokerDoc + "#" + strings.Repeat("x", manifest.MaxFileBytes-len(brokerDoc)-2) + "\n"
	if set, err := manifest.Parse(context.Background(), "at.yaml", []byte(at)); err != nil || len(set.Brokers) != 1 || len(at) != manifest.MaxFileBytes {
		t.Fatalf("a file of exactly %d bytes (%d): %v", manifest.MaxFileBytes, len(at), err)
	}
}

// FuzzCheckDepth: CheckDepth refuses exactly the documents whose
// collections nest deeper than MaxDepth, at a node that deep, and every
// Parse error names the file.
func FuzzCheckDepth(f *testing.F) {
	f.Add(deepTrigger(manifest.MaxDepth - 5))
	f.Add(deepTrigger(manifest.MaxDepth - 4))
	f.Add([]byte(strings.Repeat("[", 70) + strings.Repeat("]", 70)))
	f.Add([]byte("a:\n b:\n  - - - c: &x [1]\n    d: *x\n---\n" + strings.Repeat("- ", 66) + "x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc yaml.Node
			if dec.Decode(&doc) != nil {
				break
			}
			deepest := depth(&doc)
			err := manifest.CheckDepth("fuzz.yaml", &doc)
			if (err != nil) != (deepest > manifest.MaxDepth) {
				t.Fatalf("depth %d, CheckDepth: %v", deepest, err)
			}
			if err != nil && (err.Pos.File != "fuzz.yaml" || err.Pos.Line == 0) {
				t.Fatalf("error without a position: %v", err)
			}
		}
		if _, err := manifest.Parse(context.Background(), "fuzz.yaml", data); err != nil && !strings.Contains(err.Error(), "fuzz.yaml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}

// depth is the reference: how deep n's mappings and lists nest.
func depth(n *yaml.Node) int {
	d := 0
	for _, c := range n.Content {
		d = max(d, depth(c))
	}
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		d++
	}
	return d
}
