package stack_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/stack"
	steps "parry.dev/parry/internal/step"
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

// Every step's Knative Service runs its container as Pod Security's
// restricted profile asks (non-root, no privilege escalation, no
// capabilities, seccomp RuntimeDefault) with a read-only root filesystem.
func TestManifestsRestrictEveryStep(t *testing.T) {
	got, err := stack.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	type securityContext struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Privileged               *bool
		Capabilities             struct{ Add, Drop []string }
		SeccompProfile           struct{ Type string } `yaml:"seccompProfile"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(got))
	services := 0
	for {
		var doc struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct {
				Template struct {
					Spec struct {
						HostNetwork, HostPID bool `yaml:",omitempty"`
						Containers           []struct {
							SecurityContext *securityContext `yaml:"securityContext"`
						}
					}
				}
			}
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		if doc.Kind != "Service" {
			continue
		}
		services++
		cs := doc.Spec.Template.Spec.Containers
		if len(cs) == 0 {
			t.Fatalf("Service %s has no container", doc.Metadata.Name)
		}
		for _, c := range cs {
			sc := c.SecurityContext
			yes := func(b *bool) bool { return b != nil && *b }
			no := func(b *bool) bool { return b != nil && !*b }
			if sc == nil || !yes(sc.RunAsNonRoot) || !yes(sc.ReadOnlyRootFilesystem) || !no(sc.AllowPrivilegeEscalation) ||
				yes(sc.Privileged) || len(sc.Capabilities.Add) > 0 || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) ||
				sc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("Service %s: container securityContext %+v is not restricted", doc.Metadata.Name, sc)
			}
		}
	}
	if services != len(stack.Steps()) {
		t.Fatalf("%d Services, want %d", services, len(stack.Steps()))
	}
}

// The snapshot Service mounts the evidence key's Secret read-only and
// optional (the Service starts without it) and tells the step where; the
// steps that seal or verify incidents mount the incident key's Secret; no
// step mounts another Secret.
func TestManifestsMountSnapshotSecret(t *testing.T) {
	got, err := stack.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(got))
	found := false
	incidentKey := map[string]bool{}
	for {
		var doc struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Env          []struct{ Name, Value string }
							VolumeMounts []struct {
								Name      string
								MountPath string `yaml:"mountPath"`
								ReadOnly  bool   `yaml:"readOnly"`
							} `yaml:"volumeMounts"`
						}
						Volumes []struct {
							Name   string
							Secret *struct {
								SecretName string `yaml:"secretName"`
								Optional   *bool
							}
						}
					}
				}
			}
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		if doc.Kind != "Service" {
			continue
		}
		pod := doc.Spec.Template.Spec
		var secret string
		for _, v := range pod.Volumes {
			if v.Secret == nil {
				continue
			}
			if v.Secret.SecretName == steps.IncidentKeySecret {
				incidentKey[doc.Metadata.Name] = true
				continue
			}
			if doc.Metadata.Name != "snapshot" || v.Secret.SecretName != "parry-evidence-key" || v.Secret.Optional == nil || !*v.Secret.Optional {
				t.Errorf("Service %s: Secret volume %s %+v", doc.Metadata.Name, v.Name, *v.Secret)
			}
			secret = v.Name
		}
		if doc.Metadata.Name != "snapshot" {
			continue
		}
		found = true
		if secret == "" {
			t.Fatalf("snapshot mounts no Secret")
		}
		for _, c := range pod.Containers {
			mounted, env := false, ""
			for _, m := range c.VolumeMounts {
				if m.Name == secret {
					mounted = m.ReadOnly && m.MountPath == stack.SecretDir
					if !mounted {
						t.Errorf("snapshot mounts the Secret at %s readOnly=%v", m.MountPath, m.ReadOnly)
					}
				}
			}
			for _, e := range c.Env {
				if e.Name == "PARRY_SECRET_DIR" {
					env = e.Value
				}
			}
			if !mounted || env != stack.SecretDir {
				t.Errorf("snapshot's container: Secret mounted %v, PARRY_SECRET_DIR %q", mounted, env)
			}
		}
	}
	if !found {
		t.Fatal("no snapshot Service")
	}
	for _, d := range stack.Steps() {
		if incidentKey[d.Spec.Name] != d.Spec.NeedsIncidentKey() {
			t.Errorf("Service %s mounts the incident key: %v, want %v", d.Spec.Name, incidentKey[d.Spec.Name], d.Spec.NeedsIncidentKey())
		}
	}
}
