package stack_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"parry.dev/parry/internal/manifest"

	"go.yaml.in/yaml/v3"
)

// config/ is consistent under Pod Security: every namespace it uses is
// declared with an enforce level, parry-system's is restricted, every pod it
// runs passes its namespace's level (a privileged, host-network, host-PID or
// hostPath pod only where the level is privileged; under restricted, a
// container that is non-root, without privilege escalation or capabilities,
// with seccomp RuntimeDefault), and a pod's ConfigMap volumes live in its
// namespace.
func TestConfigPodSecurity(t *testing.T) {
	type container struct {
		Name            string
		SecurityContext *struct {
			Privileged               *bool
			RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			Capabilities             struct{ Add, Drop []string }
			SeccompProfile           struct{ Type string } `yaml:"seccompProfile"`
		} `yaml:"securityContext"`
	}
	type podSpec struct {
		HostNetwork bool `yaml:"hostNetwork"`
		HostPID     bool `yaml:"hostPID"`
		Containers  []container
		Volumes     []struct {
			HostPath  *struct{ Path string } `yaml:"hostPath"`
			ConfigMap *struct{ Name string } `yaml:"configMap"`
		}
	}
	type doc struct {
		Kind     string
		Metadata struct {
			Name, Namespace string
			Labels          map[string]string
		}
		Spec struct {
			Template struct{ Spec *podSpec }
		}
	}
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("config/: %v", err)
	}
	var docs []doc
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var d doc
			if err := dec.Decode(&d); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if d.Kind != "" {
				docs = append(docs, d)
			}
		}
	}
	levels := map[string]string{}
	configMaps := map[string]bool{}
	for _, d := range docs {
		switch d.Kind {
		case "Namespace":
			levels[d.Metadata.Name] = d.Metadata.Labels["pod-security.kubernetes.io/enforce"]
			if levels[d.Metadata.Name] == "" {
				t.Errorf("namespace %s has no pod-security.kubernetes.io/enforce label", d.Metadata.Name)
			}
		case "ConfigMap":
			configMaps[d.Metadata.Namespace+"/"+d.Metadata.Name] = true
		}
	}
	if levels["parry-system"] != "restricted" {
		t.Errorf("parry-system enforces %q, want restricted", levels["parry-system"])
	}
	pods := 0
	for _, d := range docs {
		ns := d.Metadata.Namespace
		// Knative's own namespaces come with Knative (config/ only sets
		// Eventing's and Serving's feature flags there).
		if _, ok := levels[ns]; ns != "" && ns != manifest.FeaturesNamespace && ns != "knative-serving" && !ok {
			t.Errorf("%s %s: namespace %s is not declared in config/", d.Kind, d.Metadata.Name, ns)
		}
		spec := d.Spec.Template.Spec
		if spec == nil || len(spec.Containers) == 0 {
			continue
		}
		pods++
		level := levels[ns]
		where := d.Kind + " " + ns + "/" + d.Metadata.Name
		host := spec.HostNetwork || spec.HostPID
		for _, v := range spec.Volumes {
			host = host || v.HostPath != nil
			if v.ConfigMap != nil && !configMaps[ns+"/"+v.ConfigMap.Name] {
				t.Errorf("%s mounts ConfigMap %s, which config/ does not put in %s", where, v.ConfigMap.Name, ns)
			}
		}
		for _, c := range spec.Containers {
			sc := c.SecurityContext
			if sc != nil && sc.Privileged != nil && *sc.Privileged {
				host = true
			}
			if level != "restricted" {
				continue
			}
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				len(sc.Capabilities.Add) > 0 || !slices.Contains(sc.Capabilities.Drop, "ALL") || sc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("%s: container %q is not admitted by restricted", where, c.Name)
			}
		}
		if host && level != "privileged" {
			t.Errorf("%s needs the privileged level (privileged, host namespaces or hostPath), namespace %s enforces %q", where, ns, level)
		}
	}
	if pods < 2 {
		t.Fatalf("found %d pod templates in config/", pods)
	}
}
