package playbook

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/internal/manifest"
)

// nested is a playbook whose one filter is n nots around an exact filter:
// its deepest mapping is at level n+4 on line 7 (the root, match, the filter, n nots,
// exact).
func nested(n int) []byte {
	return []byte("apiVersion: parry.dev/v1alpha1\nkind: Playbook\nmetadata: {name: deep}\ndescription: Deep.\nseverity: high\nmatch:\n  - " +
		strings.Repeat("{not: ", n) + "{exact: {type: dev.parry.sensor.privilege.v1}}" + strings.Repeat("}", n) + "\nsteps:\n  - function: classify\n")
}

// A playbook nested 9,000 levels deep took seconds and hundreds of MB to
// validate (45 s and 1.5 GB where it was reported); it is refused at once,
// at its line, naming the bound. One at the bound is a playbook.
func TestDeepPlaybookIsRefusedQuickly(t *testing.T) {
	start := time.Now()
	srcs, err := Parse("deep.yaml", nested(9000))
	if err == nil {
		err = Validate(srcs, testRegistry()).Err()
	}
	took := time.Since(start)
	want := fmt.Sprintf("deep.yaml:7:%d: mappings and lists nest deeper than the limit of %d levels", 5+6*(manifest.MaxDepth+1-3), manifest.MaxDepth)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a playbook 9,000 levels deep: got %v, want %s", err, want)
	}
	if took > time.Second {
		t.Errorf("refusing a playbook 9,000 levels deep took %s", took)
	}

	srcs, err = Parse("limit.yaml", nested(manifest.MaxDepth-4))
	if err != nil {
		t.Fatalf("a playbook %d levels deep: %v", manifest.MaxDepth, err)
	}
	if err := Validate(srcs, testRegistry()).Err(); err != nil {
		t.Fatalf("a playbook %d levels deep: %v", manifest.MaxDepth, err)
	}
	if _, err := Parse("over.yaml", nested(manifest.MaxDepth-3)); err == nil || !strings.Contains(err.Error(), "limit of 64 levels") {
		t.Fatalf("a playbook %d levels deep: got %v, want the depth refused", manifest.MaxDepth+1, err)
	}
}

// A file over 1 MiB is refused before it is parsed, and Load reads no
// more of it than that; a file of exactly 1 MiB is read.
func TestLargePlaybookIsRefused(t *testing.T) {
	dir := t.TempDir()
	pad := func(n int) []byte {
		b := nested(1)
		return append(b, ("#" + strings.Repeat("x", n-len(b)-2) + "\n")...)
	}
	at, over := pad(manifest.MaxFileBytes), pad(manifest.MaxFileBytes+1)
	if len(at) != manifest.MaxFileBytes || len(over) != manifest.MaxFileBytes+1 {
		t.Fatalf("padding: %d and %d bytes", len(at), len(over))
	}
	writeFile(t, filepath.Join(dir, "at.yaml"), at)
	if srcs, err := Load(filepath.Join(dir, "at.yaml")); err != nil || len(srcs) != 1 {
		t.Fatalf("a playbook of exactly %d bytes: %v", manifest.MaxFileBytes, err)
	}
	big := filepath.Join(dir, "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(over); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil { // sparse: Load must not read it all
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Load":  func() error { _, err := Load(big); return err }(),
		"Parse": func() error { _, err := Parse(big, over); return err }(),
	} {
		if want := big + ":10: the file is larger than the limit of 1048576 bytes (1 MiB)"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s of a file over 1 MiB: got %v, want %s", name, err, want)
		}
	}
}
