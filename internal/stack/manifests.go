package stack

import (
	"bytes"
	"fmt"
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor/api"
)

// ManifestsFile is where Manifests are committed in config/.
const ManifestsFile = "500-functions.yaml"

// StateDir is where a step with Spec.State keeps its files in a cluster,
// and SensorPort the port of the sensors' API on every node.
const (
	StateDir   = "/var/lib/parry"
	SensorPort = "9470"
	// SecretDir is where a step's Spec.Secret is mounted.
	SecretDir = "/etc/parry/secret"
	// SensorTokenDir is where a step that calls the sensors finds its
	// token for them.
	SensorTokenDir = "/var/run/secrets/parry/sensor"
	// IncidentKeyDir is where the incident key's Secret is mounted.
	IncidentKeyDir = "/etc/parry/incident-key"
)

// Manifests renders, for every step, the ServiceAccount, the ClusterRole
// with exactly the rules its Spec declares, their binding, and the Knative
// Service that runs it (a ko:// image of cmd/<name>, with what its Spec
// asks for: the compiled playbooks, a state volume or the PostgreSQL
// Secret, the sensors' port), plus a SinkBinding that gives each
// publishing step the Broker as K_SINK. The output is deterministic; config/ holds it and a test fails
// when stale.
func Manifests() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Generated from the steps' declared specs (internal/stack). DO NOT EDIT:\n# go test ./internal/stack -run Manifests -update\n")
	for _, d := range Steps() {
		for _, obj := range objects(d.Spec) {
			data, err := yaml.Marshal(obj)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", d.Spec.Name, err)
			}
			buf.WriteString("---\n")
			buf.Write(data)
		}
	}
	return buf.Bytes(), nil
}

func meta(name string) map[string]any {
	m := clusterMeta(name)
	m["namespace"] = playbook.Namespace
	return m
}

func clusterMeta(name string) map[string]any {
	return map[string]any{"name": name, "labels": map[string]string{labels.PartOf: labels.PartOfParry}}
}

func objects(s step.Spec) []any {
	account := s.ServiceAccount()
	// Beside what the step's action uses, the runtime reviews the tokens
	// of who delivers events to it (step.Serve).
	rules := append(slices.Clone(s.ClusterRules), ReviewTokensRule())
	if s.Target == step.TargetPod {
		// and resolves the pod an event names by UID from a watch of
		// every pod (step.PodIndex).
		rules = append(rules, WatchPodsRule())
	}
	env := []map[string]any{}
	mounts := []map[string]any{}
	volumes := []map[string]any{}
	if s.Playbook {
		env = append(env, map[string]any{"name": "PARRY_PLAYBOOKS", "value": "/etc/parry/playbooks/" + playbook.BundleKey})
		mounts = append(mounts, map[string]any{"name": "playbooks", "mountPath": "/etc/parry/playbooks", "readOnly": true})
		volumes = append(volumes, map[string]any{"name": "playbooks", "configMap": map[string]any{"name": playbook.BundleConfigMap}})
	}
	if s.Postgres {
		// optional, like the incident key: a missing Secret fails the
		// step's start with an error naming it (stepmain).
		env = append(env, map[string]any{"name": clients.PostgresDSNEnv, "valueFrom": map[string]any{"secretKeyRef": map[string]any{
			"name": clients.PostgresSecret, "key": clients.PostgresSecretKey, "optional": true}}})
	}
	// A step whose state is in PostgreSQL in a cluster keeps no files
	// there.
	if s.State && !s.Postgres {
		env = append(env, map[string]any{"name": "PARRY_STATE_DIR", "value": StateDir})
		mounts = append(mounts, map[string]any{"name": "state", "mountPath": StateDir})
		volumes = append(volumes, map[string]any{"name": "state", "emptyDir": map[string]any{}})
	}
	if s.Volume.Claim != "" {
		mounts = append(mounts, map[string]any{"name": "persistent", "mountPath": StateDir + "/" + s.Volume.Dir})
		volumes = append(volumes, map[string]any{"name": "persistent", "persistentVolumeClaim": map[string]any{"claimName": s.Volume.Claim}})
	}
	if s.Secret != "" {
		env = append(env, map[string]any{"name": "PARRY_SECRET_DIR", "value": SecretDir})
		mounts = append(mounts, map[string]any{"name": "secret", "mountPath": SecretDir, "readOnly": true})
		volumes = append(volumes, map[string]any{"name": "secret", "secret": map[string]any{"secretName": s.Secret, "optional": true}})
	}
	if s.NeedsIncidentKey() {
		// optional: a missing Secret then fails the step's start with the
		// command that creates it, not with a pod stuck in ContainerCreating.
		env = append(env, map[string]any{"name": "PARRY_INCIDENT_KEY", "value": IncidentKeyDir + "/key"})
		mounts = append(mounts, map[string]any{"name": "incident-key", "mountPath": IncidentKeyDir, "readOnly": true})
		volumes = append(volumes, map[string]any{"name": "incident-key", "secret": map[string]any{"secretName": step.IncidentKeySecret, "optional": true}})
	}
	if s.Sensors {
		// The step's identity for the sensors: a token of its account for
		// their audience only (a stolen one opens nothing else), rotated by
		// the kubelet.
		env = append(env, map[string]any{"name": "PARRY_SENSOR_PORT", "value": SensorPort},
			map[string]any{"name": "PARRY_SENSOR_TOKEN", "value": SensorTokenDir + "/token"})
		mounts = append(mounts, map[string]any{"name": "sensor-token", "mountPath": SensorTokenDir, "readOnly": true})
		volumes = append(volumes, map[string]any{"name": "sensor-token", "projected": map[string]any{"sources": []map[string]any{
			{"serviceAccountToken": map[string]any{"audience": api.Audience, "expirationSeconds": 3600, "path": "token"}},
		}}})
	}
	container := map[string]any{"image": "ko://parry.dev/parry/cmd/" + s.Name, "env": env, "securityContext": ContainerSecurity()}
	if s.EnvSecret != "" {
		container["envFrom"] = []map[string]any{{"secretRef": map[string]any{"name": s.EnvSecret, "optional": true}}}
	}
	if len(mounts) > 0 {
		container["volumeMounts"] = mounts
	}
	podSpec := map[string]any{"serviceAccountName": account, "containers": []map[string]any{container}}
	if s.Volume.Claim != "" {
		// The kubelet gives the volume to the image's group (distroless's
		// nonroot, 65532), so the step can write a freshly made one.
		podSpec["securityContext"] = map[string]any{"fsGroup": NonrootID}
	}
	if len(volumes) > 0 {
		podSpec["volumes"] = volumes
	}
	objs := []any{
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account)},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": clusterMeta(account), "rules": rules},
		map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": clusterMeta(account),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
			"subjects": []map[string]any{{"kind": "ServiceAccount", "name": account, "namespace": playbook.Namespace}}},
		map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": meta(s.Name),
			"spec": map[string]any{"template": map[string]any{"metadata": templateMeta(s), "spec": podSpec}}},
	}
	if s.Publishes {
		objs = append(objs, map[string]any{
			"apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding",
			"metadata": meta(s.Name + "-sink"),
			"spec": map[string]any{
				"subject": map[string]any{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": s.Name},
				"sink":    map[string]any{"ref": map[string]any{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": playbook.BrokerName}},
			},
		})
	}
	return objs
}

// ReviewTokensRule lets a step's Service check the token of each caller
// with TokenReview (step.Callers).
func ReviewTokensRule() rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}}
}

// WatchPodsRule lets a step that acts on pods keep its index of them by
// UID (step.WatchPods).
func WatchPodsRule() rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}}
}

// ContainerSecurity is every step container's securityContext: what Pod
// Security's restricted profile asks for, and a read-only root filesystem
// (a step writes only under its state volume, an emptyDir, and its Volume,
// if it has one). It sits on the container because Knative accepts these
// fields there without a feature flag; the image's user is distroless's
// nonroot (NonrootID).
func ContainerSecurity() map[string]any {
	return map[string]any{
		"runAsNonRoot":             true,
		"readOnlyRootFilesystem":   true,
		"allowPrivilegeEscalation": false,
		"capabilities":             map[string]any{"drop": []string{"ALL"}},
		"seccompProfile":           map[string]any{"type": "RuntimeDefault"},
	}
}

// NonrootID is the user and group of the steps' images (distroless's
// nonroot).
const NonrootID = 65532

// templateMeta runs a step with a Volume as one replica at most: a
// ReadWriteOnce volume attaches to one node.
func templateMeta(s step.Spec) map[string]any {
	m := map[string]any{"labels": map[string]string{labels.PartOf: labels.PartOfParry}}
	if s.Volume.Claim != "" {
		m["annotations"] = map[string]string{"autoscaling.knative.dev/max-scale": "1"}
	}
	return m
}
