package events_test

import (
	"bytes"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"parry.dev/parry/internal/events"
)

var update = flag.Bool("update", false, "rewrite docs/events.md")

// docs/events.md is what the catalogue renders to.
func TestCatalogueIsCurrent(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "events.md")
	got := events.Markdown()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("docs/events.md is stale (%v): go test ./internal/events -run Catalogue -update", err)
	}
}

// Every Type* and Ext* constant of the package is in the catalogue, so a new
// one cannot be added without its documentation.
func TestCatalogueIsComplete(t *testing.T) {
	documented := map[string]bool{}
	for _, e := range append(events.Types(), events.Extensions()...) {
		documented[e.Name] = true
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "events.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			v := s.(*ast.ValueSpec)
			for i, name := range v.Names {
				if !(strings.HasPrefix(name.Name, "Ext") || strings.HasPrefix(name.Name, "Type")) || name.Name == "TypeSensorPrefix" || name.Name == "TypeFalcoPrefix" || i >= len(v.Values) {
					continue
				}
				lit, ok := v.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				value, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				checked++
				if !documented[value] {
					t.Errorf("%s (%q) is not in the catalogue (internal/events/catalog.go)", name.Name, value)
				}
			}
		}
	}
	if checked < 30 {
		t.Fatalf("found only %d Type and Ext constants in events.go: the parse missed them", checked)
	}
}
