package manifest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Position is a place in a YAML file. Line and Column are 1-based; zero
// means unknown.
type Position struct {
	File   string
	Line   int
	Column int
}

func (p Position) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	default:
		return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
	}
}

// Error is one problem at one place.
type Error struct {
	Pos Position
	Msg string
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// Errors collects every problem found, so one run reports them all.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns es as an error, or nil when there are none.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

var (
	segmentRE = regexp.MustCompile(`^([^\[\]]*)((?:\[[^\]]+\])*)$`)
	indexRE   = regexp.MustCompile(`\[([^\]]+)\]`)
)

// Locate returns the position of the field at path (Knative's FieldError
// notation, e.g. "spec.filters[0].cesql") below node, or the position of the
// deepest part of the path that exists.
func Locate(file string, node *yaml.Node, path string) Position {
	cur := node
	if cur != nil && cur.Kind == yaml.DocumentNode && len(cur.Content) > 0 {
		cur = cur.Content[0]
	}
	best := posOf(file, cur)
	if path == "" || cur == nil {
		return best
	}
	for _, seg := range strings.Split(path, ".") {
		m := segmentRE.FindStringSubmatch(seg)
		if m == nil {
			return best
		}
		if m[1] != "" {
			next := mappingValue(cur, m[1])
			if next == nil {
				return best
			}
			cur = next
			best = posOf(file, cur)
		}
		for _, idx := range indexRE.FindAllStringSubmatch(m[2], -1) {
			next := indexValue(cur, idx[1])
			if next == nil {
				return best
			}
			cur = next
			best = posOf(file, cur)
		}
	}
	return best
}

func posOf(file string, n *yaml.Node) Position {
	if n == nil {
		return Position{File: file}
	}
	return Position{File: file, Line: n.Line, Column: n.Column}
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func indexValue(n *yaml.Node, idx string) *yaml.Node {
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.SequenceNode:
		i, err := strconv.Atoi(idx)
		if err != nil || i < 0 || i >= len(n.Content) {
			return nil
		}
		return n.Content[i]
	case yaml.MappingNode:
		return mappingValue(n, idx)
	}
	return nil
}
