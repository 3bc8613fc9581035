package playbook

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/step"
)

// Bundle is the runtime form of all playbooks: what functions read to find
// a playbook's step parameters and guardrails. It travels as the ConfigMap
// parry-playbooks (key playbooks.yaml).
type Bundle struct {
	APIVersion string     `yaml:"apiVersion" json:"apiVersion"`
	Kind       string     `yaml:"kind" json:"kind"`
	Playbooks  []Compiled `yaml:"playbooks" json:"playbooks"`
}

// Compiled is one validated playbook with defaults applied.
type Compiled struct {
	Name        string         `yaml:"name" json:"name"`
	Description string         `yaml:"description" json:"description"`
	Severity    string         `yaml:"severity" json:"severity"`
	Match       []Filter       `yaml:"match" json:"match"`
	Guardrails  guard.Rules    `yaml:"guardrails" json:"guardrails"`
	Steps       []CompiledStep `yaml:"steps" json:"steps"`
}

// CompiledStep is one step with its validated parameters.
type CompiledStep struct {
	Name     string `yaml:"name" json:"name"`
	Function string `yaml:"function" json:"function"`
	// After is the function of the step this one runs after.
	After  string      `yaml:"after,omitempty" json:"after,omitempty"`
	When   string      `yaml:"when,omitempty" json:"when,omitempty"`
	Params step.Params `yaml:"params,omitempty" json:"params,omitempty"`
}

// Playbook returns the playbook named name.
func (b *Bundle) Playbook(name string) (Compiled, bool) {
	for _, p := range b.Playbooks {
		if p.Name == name {
			return p, true
		}
	}
	return Compiled{}, false
}

// Step returns the parameters playbook gives function, or false when the
// playbook does not run that step.
func (b *Bundle) Step(playbook, fn string) (step.Params, bool) {
	p, ok := b.Playbook(playbook)
	if !ok {
		return nil, false
	}
	return p.step(fn)
}

func (p Compiled) step(fn string) (step.Params, bool) {
	for _, s := range p.Steps {
		if s.Function == fn {
			return s.Params, true
		}
	}
	return nil, false
}

// StepConfig implements step.Playbooks: what playbook asks of the
// step fn, with its guardrails.
func (b *Bundle) StepConfig(playbook, fn string) (step.StepConfig, error) {
	p, ok := b.Playbook(playbook)
	if !ok {
		return step.StepConfig{}, fmt.Errorf("no playbook %q in the compiled playbooks (is the playbook extension right, and config/ compiled?)", playbook)
	}
	params, ok := p.step(fn)
	if !ok {
		return step.StepConfig{}, fmt.Errorf("playbook %q has no step %q", playbook, fn)
	}
	return step.StepConfig{Params: params, Guard: p.Guardrails}, nil
}

var _ step.Playbooks = (*Bundle)(nil)

// ParseBundle decodes the bundle (the ConfigMap's playbooks.yaml value, or
// the mounted file).
func ParseBundle(data []byte, name string) (*Bundle, error) {
	var b Bundle
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("playbook bundle %s: %w (recompile with `parry playbook compile`)", name, err)
	}
	return &b, nil
}

// LoadBundle reads the bundle from a file: either the plain bundle (as a
// ConfigMap volume mounts it) or a directory holding the compiled
// ConfigMap (config/, as parry run reads it).
func LoadBundle(path string) (*Bundle, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		data, err := ConfigMapData(filepath.Join(path, BundleFile), BundleKey)
		if err != nil {
			return nil, err
		}
		return ParseBundle(data, filepath.Join(path, BundleFile))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the playbook bundle: %w", err)
	}
	return ParseBundle(data, path)
}

// ConfigMapData returns data[key] of the ConfigMap manifest in file.
func ConfigMapData(file, key string) ([]byte, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w (run `parry playbook compile --out %s playbooks/`)", err, filepath.Dir(file))
	}
	var cm struct {
		Kind string            `yaml:"kind"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	v, ok := cm.Data[key]
	if cm.Kind != "ConfigMap" || !ok {
		return nil, fmt.Errorf("%s: not a ConfigMap with data key %s", file, key)
	}
	return []byte(v), nil
}

// SensorFiltersFromConfig writes the compiled sensor filters held in the
// ConfigMap in configDir to a plain SensorFilters file in dir and returns
// its path, for sensor.Config.FiltersPath (parry run's default). ok is
// false when configDir has no compiled filters.
func SensorFiltersFromConfig(configDir, dir string) (path string, ok bool, err error) {
	file := filepath.Join(configDir, SensorFiltersFile)
	if _, err := os.Stat(file); os.IsNotExist(err) {
		return "", false, nil
	}
	data, err := ConfigMapData(file, SensorFiltersKey)
	if err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	path = filepath.Join(dir, "sensor-filters.yaml")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return "", false, err
	}
	return path, true, os.Rename(tmp, path)
}

// Write writes out into dir atomically per file and removes compiled
// Trigger files of playbooks that no longer exist.
func (out Output) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), TriggerFilePrefix) && out[e.Name()] == nil {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for _, name := range sortedKeys(out) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p+".tmp", out[name], 0o644); err != nil {
			return err
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return err
		}
	}
	return nil
}
