// Package filters is the schema of the sensor's filter file (kind
// SensorFilters): which execs, connects, file opens and privilege signals the
// kernel passes to the sensor. The playbook compiler writes it, the sensor
// loads it into BPF maps; see default.yaml for every field with comments.
package filters

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// APIVersion and Kind identify the file.
const (
	APIVersion = "parry.dev/v1alpha1"
	Kind       = "SensorFilters"
)

// Limits of the kernel's filter maps.
const (
	MaxNames       = 1024
	MaxPorts       = 1024
	MaxPrefixNodes = 4096
	MaxNameLen     = 31
	MaxComponent   = 63
)

// Signal names, in the kernel's numbering order.
var Signals = []string{"setuid", "setgid", "ptrace", "memfd", "exec-memfd", "unshare", "setns", "module"}

// Config is one SensorFilters file.
type Config struct {
	APIVersion string `yaml:"apiVersion" json:"apiVersion"`
	Kind       string `yaml:"kind" json:"kind"`
	// Scope is "pods" (below PodRoots) or "all" (every process).
	Scope    string   `yaml:"scope" json:"scope"`
	PodRoots []string `yaml:"podRoots,omitempty" json:"podRoots,omitempty"`
	Exec     Exec     `yaml:"exec" json:"exec"`
	Connect  Connect  `yaml:"connect" json:"connect"`
	Files    Files    `yaml:"files" json:"files"`
	Signals  []string `yaml:"signals" json:"signals"`
}

// Exec selects exec (and exit) events.
type Exec struct {
	All   bool     `yaml:"all" json:"all"`
	Names []string `yaml:"names" json:"names"`
	Exits bool     `yaml:"exits" json:"exits"`
}

// Connect selects outbound connects.
type Connect struct {
	All   bool     `yaml:"all" json:"all"`
	Ports []uint16 `yaml:"ports" json:"ports"`
}

// Files selects opens by path prefix.
type Files struct {
	Prefixes []string `yaml:"prefixes" json:"prefixes"`
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the built-in filter file, with its comments.
func DefaultYAML() []byte { return slices.Clone(defaultYAML) }

// Default is the built-in configuration.
func Default() Config {
	c, err := Parse(defaultYAML, "default.yaml")
	if err != nil {
		panic("filters: built-in default.yaml is invalid: " + err.Error())
	}
	return c
}

// Load reads and validates a filter file; an empty path gives Default().
func Load(file string) (Config, error) {
	if file == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return Config{}, fmt.Errorf("sensor filters: %w", err)
	}
	return Parse(b, file)
}

// Parse decodes and validates b; name is used in errors. Unknown fields are
// errors (with their line), so a typo never silently widens or narrows what
// the sensor watches.
func Parse(b []byte, name string) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("sensor filters %s: %w", name, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("sensor filters %s: %w", name, err)
	}
	return c, nil
}

// Validate checks the configuration against the schema and the kernel's limits.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.APIVersion != APIVersion {
		add("apiVersion %q: want %s", c.APIVersion, APIVersion)
	}
	if c.Kind != Kind {
		add("kind %q: want %s", c.Kind, Kind)
	}
	switch c.Scope {
	case "pods":
		if len(c.PodRoots) == 0 {
			add("scope pods: podRoots is empty, nothing would be watched")
		}
	case "all":
	default:
		add("scope %q: use pods or all", c.Scope)
	}
	for _, r := range c.PodRoots {
		if r == "" || strings.HasPrefix(r, "/") || path.Clean(r) != r || strings.HasPrefix(r, "..") {
			add("podRoots %q: a clean path relative to the cgroup mount", r)
		}
	}
	if len(c.Exec.Names) > MaxNames {
		add("exec.names: %d names, at most %d", len(c.Exec.Names), MaxNames)
	}
	for _, n := range c.Exec.Names {
		if n == "" || len(n) > MaxNameLen || strings.Contains(n, "/") {
			add("exec.names %q: a basename of 1 to %d bytes (no /)", n, MaxNameLen)
		}
	}
	if len(c.Connect.Ports) > MaxPorts {
		add("connect.ports: %d ports, at most %d", len(c.Connect.Ports), MaxPorts)
	}
	for _, p := range c.Connect.Ports {
		if p == 0 {
			add("connect.ports: 0 is not a port")
		}
	}
	nodes := 0
	for _, p := range c.Files.Prefixes {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			add("files.prefixes %q: an absolute, clean path other than /", p)
			continue
		}
		for comp := range strings.SplitSeq(p[1:], "/") {
			nodes++
			if len(comp) > MaxComponent {
				add("files.prefixes %q: component %q is longer than %d bytes", p, comp, MaxComponent)
			}
		}
	}
	if nodes > MaxPrefixNodes {
		add("files.prefixes: %d path components, at most %d", nodes, MaxPrefixNodes)
	}
	for _, s := range c.Signals {
		if !slices.Contains(Signals, s) {
			add("signals %q: use %s", s, strings.Join(Signals, ", "))
		}
	}
	return errors.Join(errs...)
}

// Merge is the union of what a and b watch, for combining the needs of
// several playbooks: a wider scope, "all" over a list, the union of lists.
func Merge(a, b Config) Config {
	out := a
	if a.Scope == "all" || b.Scope == "all" {
		out.Scope = "all"
	}
	out.PodRoots = union(a.PodRoots, b.PodRoots)
	out.Exec.All = a.Exec.All || b.Exec.All
	out.Exec.Exits = a.Exec.Exits || b.Exec.Exits
	out.Exec.Names = union(a.Exec.Names, b.Exec.Names)
	out.Connect.All = a.Connect.All || b.Connect.All
	out.Connect.Ports = union(a.Connect.Ports, b.Connect.Ports)
	out.Files.Prefixes = union(a.Files.Prefixes, b.Files.Prefixes)
	out.Signals = union(a.Signals, b.Signals)
	return out
}

func union[T interface{ ~string | ~uint16 }](a, b []T) []T {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// Marshal encodes c as YAML.
func Marshal(c Config) ([]byte, error) { return yaml.Marshal(c) }
