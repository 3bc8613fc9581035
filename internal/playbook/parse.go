package playbook

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/manifest"
)

// Source is a parsed playbook and the YAML it came from, so that later
// checks can point at the offending field.
type Source struct {
	Playbook
	File string
	Node *yaml.Node // the document's root mapping
}

// Pos returns the position of path (e.g. "steps[1].params") in the
// playbook, or of the deepest part of it that exists.
func (s *Source) Pos(path string) manifest.Position { return manifest.Locate(s.File, s.Node, path) }

func (s *Source) errorf(path, format string, args ...any) *manifest.Error {
	return &manifest.Error{Pos: s.Pos(path), Msg: fmt.Sprintf(format, args...)}
}

// Parse reads every playbook document in data. Unknown fields and values
// of the wrong type are errors at their line and column; nothing is
// silently dropped, so a typo cannot widen or narrow a playbook.
//
// A file over manifest.MaxFileBytes, or a document nested deeper than
// manifest.MaxDepth, is refused before it is checked or decoded.
func Parse(file string, data []byte) ([]*Source, error) {
	if e := manifest.CheckSize(file, data); e != nil {
		return nil, manifest.Errors{e}
	}
	var out []*Source
	var errs manifest.Errors
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, &manifest.Error{Pos: yamlErrorPos(file, err), Msg: "malformed YAML: " + trimYAMLError(err)})
			break
		}
		if len(doc.Content) == 0 {
			continue
		}
		if e := manifest.CheckDepth(file, &doc); e != nil {
			errs = append(errs, e)
			continue
		}
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			errs = append(errs, &manifest.Error{Pos: manifest.Locate(file, root, ""), Msg: "a playbook is a mapping with apiVersion, kind, metadata, match and steps"})
			continue
		}
		before := len(errs)
		errs = append(errs, checkNode(file, root, reflect.TypeFor[Playbook](), "")...)
		if len(errs) > before {
			continue
		}
		src := &Source{File: file, Node: root}
		if err := root.Decode(&src.Playbook); err != nil {
			// checkNode accepts only what decodes; this is a bug guard.
			errs = append(errs, &manifest.Error{Pos: manifest.Locate(file, root, ""), Msg: trimYAMLError(err)})
			continue
		}
		out = append(out, src)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

var lineRE = strings.NewReplacer("yaml: ", "")

func trimYAMLError(err error) string { return lineRE.Replace(err.Error()) }

// yamlErrorPos pulls "line N" out of a yaml.v3 syntax error.
func yamlErrorPos(file string, err error) manifest.Position {
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		rest := msg[i+5:]
		end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(rest)
		}
		if n, err := strconv.Atoi(rest[:end]); err == nil {
			return manifest.Position{File: file, Line: n, Column: 1}
		}
	}
	return manifest.Position{File: file, Line: 1, Column: 1}
}

// checkNode verifies that n can decode into t exactly: known fields only,
// scalars of the right kind. It reports every problem at its node.
func checkNode(file string, n *yaml.Node, t reflect.Type, path string) manifest.Errors {
	at := func(n *yaml.Node, format string, args ...any) manifest.Errors {
		return manifest.Errors{{Pos: manifest.Position{File: file, Line: n.Line, Column: n.Column}, Msg: fmt.Sprintf(format, args...)}}
	}
	where := path
	if where == "" {
		where = "the document"
	}
	if n.Kind == yaml.AliasNode {
		return at(n, "%s: YAML aliases are not allowed in playbooks", where)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Map || t.Kind() == reflect.Slice) {
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return checkNode(file, n, t.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return at(n, "%s: want a mapping, got %s", where, describe(n))
		}
		fields := yamlFields(t)
		var errs manifest.Errors
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			f, ok := fields[key.Value]
			if !ok {
				errs = append(errs, at(key, "%s: unknown field %q (known: %s)", where, key.Value, strings.Join(sortedKeys(fields), ", "))...)
				continue
			}
			if seen[key.Value] {
				errs = append(errs, at(key, "%s: field %q given twice", where, key.Value)...)
			}
			seen[key.Value] = true
			errs = append(errs, checkNode(file, val, f.Type, join(path, key.Value))...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return at(n, "%s: want a mapping, got %s", where, describe(n))
		}
		var errs manifest.Errors
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			if key.Kind != yaml.ScalarNode || key.Tag != "!!str" {
				errs = append(errs, at(key, "%s: keys must be strings", where)...)
				continue
			}
			errs = append(errs, checkNode(file, val, t.Elem(), join(path, key.Value))...)
		}
		return errs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return at(n, "%s: want a list, got %s", where, describe(n))
		}
		var errs manifest.Errors
		for i, item := range n.Content {
			errs = append(errs, checkNode(file, item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	case reflect.Interface:
		return checkAny(file, n, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool") {
			return at(n, "%s: want a string, got %s", where, describe(n))
		}
		if n.Tag != "!!str" {
			return at(n, "%s: want a string, got %s %s (quote it)", where, strings.TrimPrefix(n.Tag, "!!"), n.Value)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return at(n, "%s: want true or false, got %s", where, describe(n))
		}
	case reflect.Int, reflect.Uint16:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return at(n, "%s: want an integer, got %s", where, describe(n))
		}
		bits := 63
		if t.Kind() == reflect.Uint16 {
			bits = 16
		}
		v, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || v < 0 || (bits == 16 && v > 65535) {
			return at(n, "%s: %s is out of range", where, n.Value)
		}
	}
	return nil
}

// checkAny accepts the shapes parameters may take: scalars, lists of
// scalars, nothing deeper.
func checkAny(file string, n *yaml.Node, path string) manifest.Errors {
	switch n.Kind {
	case yaml.ScalarNode:
		return nil
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return manifest.Errors{{Pos: manifest.Position{File: file, Line: item.Line, Column: item.Column}, Msg: path + ": a parameter is a scalar or a list of scalars"}}
			}
		}
		return nil
	}
	return manifest.Errors{{Pos: manifest.Position{File: file, Line: n.Line, Column: n.Column}, Msg: path + ": a parameter is a scalar or a list of scalars"}}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%s %q", strings.TrimPrefix(n.Tag, "!!"), n.Value)
	}
	return "something else"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = f
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
