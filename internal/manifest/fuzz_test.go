package manifest_test

import (
	"context"
	"strings"
	"testing"

	"parry.dev/parry/internal/manifest"
)

// FuzzParse feeds arbitrary YAML to the loader: it must never panic (the
// CESQL parser does on some inputs), and every error must name the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(broker))
	f.Add([]byte(broker + "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t, namespace: parry-system}\nspec:\n  broker: parry\n  filters: [{cesql: \"a = \"}]\n  subscriber: {uri: http://x/}\n"))
	f.Add([]byte("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nspec: {filters: [{not: {all: [{}]}}]}\n"))
	f.Add([]byte("kind: [\n"))
	f.Add([]byte("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nspec:\n  filters:\n  - cesql: \"LIKE LIKE ((\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := manifest.Parse(context.Background(), "fuzz.yaml", data)
		if err != nil && !strings.Contains(err.Error(), "fuzz.yaml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}
