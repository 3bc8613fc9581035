package manifest

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// Bounds on the YAML parry reads from users (playbooks, the Broker and
// Trigger manifests), checked before anything walks a document: a file is
// read up to MaxFileBytes, and a document's syntax tree is refused when it
// nests deeper than MaxDepth, before the checks and decoders that recurse
// through it (a playbook's filters nested 9,000 levels deep took seconds
// and hundreds of MB to validate). Real manifests nest about ten levels.
const (
	MaxFileBytes = 1 << 20
	MaxDepth     = 64
)

// ReadFile reads path, refusing a file over MaxFileBytes without reading
// more than that.
func ReadFile(path string) ([]byte, *Error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Pos: Position{File: path}, Msg: err.Error()}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, &Error{Pos: Position{File: path}, Msg: err.Error()}
	}
	if e := CheckSize(path, data); e != nil {
		return nil, e
	}
	return data, nil
}

// CheckSize refuses data over MaxFileBytes, at the line where it passes
// the bound.
func CheckSize(file string, data []byte) *Error {
	if len(data) <= MaxFileBytes {
		return nil
	}
	line := bytes.Count(data[:MaxFileBytes], []byte("\n")) + 1
	return &Error{Pos: Position{File: file, Line: line}, Msg: fmt.Sprintf("the file is larger than the limit of %d bytes (1 MiB); split it", MaxFileBytes)}
}

// CheckDepth refuses a document whose mappings and lists nest deeper than
// MaxDepth (the document's root collection is level 1), at the first node
// past the bound. It walks without recursion, and stops there.
func CheckDepth(file string, doc *yaml.Node) *Error {
	type item struct {
		n     *yaml.Node
		depth int
	}
	stack := []item{{doc, 0}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		depth := it.depth
		if it.n.Kind == yaml.MappingNode || it.n.Kind == yaml.SequenceNode {
			depth++
			if depth > MaxDepth {
				return &Error{Pos: Position{File: file, Line: it.n.Line, Column: it.n.Column},
					Msg: fmt.Sprintf("mappings and lists nest deeper than the limit of %d levels", MaxDepth)}
			}
		}
		for i := len(it.n.Content) - 1; i >= 0; i-- {
			stack = append(stack, item{it.n.Content[i], depth})
		}
	}
	return nil
}
