package steps

import (
	"bytes"
	"fmt"
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/functions/failed"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/playbook"
)

// ManifestsFile is where Manifests are committed in config/.
const ManifestsFile = "500-functions.yaml"

// Manifests renders, for every step, the ServiceAccount, the ClusterRole
// with exactly the rules its Spec declares, their binding, and the Knative
// Service that runs it (a ko:// image, the compiled playbooks mounted), plus
// the SinkBinding that gives the dead-letter step the Broker as K_SINK. The
// output is deterministic; config/ holds it and a test fails when stale.
func Manifests() ([]byte, error) {
	specs := []function.Spec{failed.Spec()}
	for _, name := range Specs().Names() {
		specs = append(specs, Specs()[name])
	}
	var buf bytes.Buffer
	buf.WriteString("# Generated from the steps' declared specs (internal/steps). DO NOT EDIT:\n# go test ./internal/steps -run Manifests -update\n")
	for _, s := range specs {
		for _, obj := range objects(s) {
			data, err := yaml.Marshal(obj)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.Name, err)
			}
			buf.WriteString("---\n")
			buf.Write(data)
		}
	}
	binding := map[string]any{
		"apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding",
		"metadata": meta("parry-failed-sink"),
		"spec": map[string]any{
			"subject": map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": failed.Name},
			"sink":    map[string]any{"ref": map[string]any{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": playbook.BrokerName}},
		},
	}
	data, err := yaml.Marshal(binding)
	if err != nil {
		return nil, err
	}
	buf.WriteString("---\n")
	buf.Write(data)
	return buf.Bytes(), nil
}

func meta(name string) map[string]any {
	m := clusterMeta(name)
	m["namespace"] = playbook.Namespace
	return m
}

func clusterMeta(name string) map[string]any {
	return map[string]any{"name": name, "labels": map[string]string{guard.PartOfLabel: "parry"}}
}

func objects(s function.Spec) []any {
	account := "parry-" + s.Name
	if s.Name == failed.Name {
		account = s.Name
	}
	rules := slices.Clone(s.ClusterRules)
	if rules == nil {
		rules = []rbacv1.PolicyRule{}
	}
	env := []map[string]any{
		{"name": "PARRY_PLAYBOOKS", "value": "/etc/parry/playbooks/" + playbook.BundleKey},
	}
	if s.Name == "snapshot" {
		env = append(env, map[string]any{"name": "PARRY_EVIDENCE_DIR", "value": "/var/lib/parry/evidence"})
	}
	return []any{
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account)},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta(account), "rules": rules},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta(account),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": account, "namespace": playbook.Namespace}}},
		map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": meta(s.Name),
			"spec": map[string]any{"template": map[string]any{
				"metadata": templateMeta(s.Name),
				"spec": map[string]any{
					"serviceAccountName": account,
					"containers": []map[string]any{{
						"image":        "ko://parry.dev/parry/functions/" + dir(s.Name) + "/cmd/" + dir(s.Name),
						"env":          env,
						"volumeMounts": []map[string]any{{"name": "playbooks", "mountPath": "/etc/parry/playbooks", "readOnly": true}},
					}},
					"volumes": []map[string]any{{"name": "playbooks", "configMap": map[string]any{"name": playbook.BundleConfigMap}}},
				},
			}}},
	}
}

// templateMeta keeps classify to one replica: its baselines, open incidents
// and breakers live in one process's store, so a second replica would open
// a second incident for the same attack.
func templateMeta(name string) map[string]any {
	m := map[string]any{"labels": map[string]string{guard.PartOfLabel: "parry"}}
	if name == classify.Name {
		m["annotations"] = map[string]string{"autoscaling.knative.dev/max-scale": "1", "autoscaling.knative.dev/min-scale": "1"}
	}
	return m
}

// dir is the package directory of a step under functions/.
func dir(name string) string {
	if name == failed.Name {
		return "failed"
	}
	return name
}
