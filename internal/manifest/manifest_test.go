package manifest_test

import (
	"context"
	"strings"
	"testing"

	"parry.dev/parry/internal/manifest"
)

const broker = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: parry
  namespace: parry-system
`

func TestParseAcceptsBrokerAndTrigger(t *testing.T) {
	set, err := manifest.Parse(context.Background(), "ok.yaml", []byte(broker+`---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ignored}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: miner
  namespace: parry-system
spec:
  broker: parry
  filters:
  - all:
    - exact: {type: dev.parry.sensor.network.connect.v1}
    - any:
      - exact: {dport: "3333"}
      - cesql: "dport = '4444'"
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: classify}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Brokers) != 1 || len(set.Triggers) != 1 {
		t.Fatalf("got %d brokers, %d triggers", len(set.Brokers), len(set.Triggers))
	}
	if got := set.Triggers[0].BrokerKey(); got != "parry-system/parry" {
		t.Fatalf("BrokerKey = %q", got)
	}
	if set.Brokers[0].Annotations["eventing.knative.dev/broker.class"] == "" {
		t.Fatal("Knative's defaulting did not run")
	}
}

func TestParseReportsEveryProblemWithPosition(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"cesql syntax", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  filters:
  - cesql: "type = "
  subscriber: {uri: "http://127.0.0.1:1/"}
`, []string{"bad.yaml:13:", "Trigger parry-system/t spec.filters[0].cesql", "invalid value"}},
		{"two dialects", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  filters:
  - exact: {type: a}
    prefix: {type: b}
  subscriber: {uri: "http://127.0.0.1:1/"}
`, []string{"bad.yaml:13:5", "sets exact and prefix"}},
		{"empty exact value is skipped by Knative, so rejected here", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  filters:
  - all:
    - exact: {type: ""}
  subscriber: {uri: "http://127.0.0.1:1/"}
`, []string{"bad.yaml:14:7", "spec.filters[0].all[0]", "attribute and value must both be non-empty"}},
		{"unknown field", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  filterz: {}
  subscriber: {uri: "http://127.0.0.1:1/"}
`, []string{"bad.yaml:7:1", "unknown field", "filterz"}},
		{"missing subscriber", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
`, []string{"bad.yaml:11:3", "spec.subscriber"}},
		{"unknown broker", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: nope
  subscriber: {uri: "http://127.0.0.1:1/"}
`, []string{"bad.yaml:7:1", "subscribes to Broker parry-system/nope, which no manifest defines"}},
		{"bad delivery", `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  subscriber: {uri: "http://127.0.0.1:1/"}
  delivery: {backoffDelay: "soon"}
`, []string{"spec.delivery.backoffDelay"}},
		{"malformed YAML", "kind: [", []string{"bad.yaml", "malformed YAML"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := manifest.Parse(context.Background(), "bad.yaml", []byte(broker+"---\n"+c.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadDirShipsAValidConfig(t *testing.T) {
	set, err := manifest.LoadDir(context.Background(), "../../config")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := set.Broker("parry-system/parry"); !ok {
		t.Fatal("config/ does not ship Broker parry-system/parry")
	}
}

func TestLoadDirMissing(t *testing.T) {
	_, err := manifest.LoadDir(context.Background(), "does-not-exist")
	if err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("error does not say what to do: %v", err)
	}
}

func TestParseEventPolicyAndFeatures(t *testing.T) {
	set, err := manifest.Parse(context.Background(), "policy.yaml", []byte(broker+`---
apiVersion: v1
kind: ConfigMap
metadata: {name: config-features, namespace: knative-eventing}
data:
  authentication-oidc: enabled
  default-authorization-mode: deny-all
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: sensor, namespace: parry-system}
spec:
  to:
  - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: parry}
  from:
  - sub: system:serviceaccount:parry-sensor:parry-sensor
  - ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: t}
  filters:
  - prefix: {type: dev.parry.sensor.}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(set.EventPolicies) != 1 {
		t.Fatalf("got %d EventPolicies", len(set.EventPolicies))
	}
	p := set.EventPolicies[0]
	if p.Key() != "parry-system/sensor" || p.Spec.From[1].Ref.Namespace != "parry-system" {
		t.Fatalf("policy %s: from[1].ref.namespace = %q: Knative's defaulting did not run", p.Key(), p.Spec.From[1].Ref.Namespace)
	}
	if !set.Features.IsOIDCAuthentication() || !set.Features.IsAuthorizationDefaultModeDenyAll() {
		t.Fatalf("features = %v", set.Features)
	}
	// Without the ConfigMap, no flags: a cluster's own apply.
	set, err = manifest.Parse(context.Background(), "b.yaml", []byte(broker))
	if err != nil || set.Features != nil {
		t.Fatalf("features = %v, err = %v", set.Features, err)
	}
}

func TestParseEventPolicyErrorsNameFileAndField(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"wildcard not at the end", `apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: p, namespace: parry-system}
spec:
  from:
  - sub: "system:*:x"
`, []string{"bad.yaml:12:", "EventPolicy parry-system/p spec.from[0].sub", "only allowed as suffix"}},
		{"ref and sub", `apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: p, namespace: parry-system}
spec:
  from:
  - sub: a
    ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: t}
`, []string{"bad.yaml:13:10", "spec.from[0].ref", "expected exactly one, got both"}},
		{"empty filter value", `apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: p, namespace: parry-system}
spec:
  from:
  - sub: a
  filters:
  - prefix: {type: ""}
`, []string{"bad.yaml:", "EventPolicy parry-system/p spec.filters[0]"}},
		{"unknown field", `apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: p, namespace: parry-system}
spec:
  form: []
`, []string{"bad.yaml:7:1", "EventPolicy", "form"}},
		{"bad feature flag", `apiVersion: v1
kind: ConfigMap
metadata: {name: config-features, namespace: knative-eventing}
data:
  authentication-oidc: sometimes
`, []string{"bad.yaml:11:24", "config-features data.authentication-oidc", "sometimes"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := manifest.Parse(context.Background(), "bad.yaml", []byte(broker+"---\n"+c.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
