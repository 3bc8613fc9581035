package snapshot_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
	"parry.dev/parry/tests/devenv"
)

// snapshot saves a complete bundle (the pod, its owner chain, its events;
// only the log and the flight recorder are unavailable here, without a
// kubelet or a sensor) with exactly the rules its Spec declares, and
// declares no verb it does not use: without any one of them the step fails
// or the bundle lacks a part. (get on nodes finds the node's sensor; this
// test runs without one.)
func TestDeclaredRulesAreAllNeeded(t *testing.T) {
	env := devenv.Require(t)
	admin := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	const ns = "snapshot-rules"
	pod := runningPod(t, admin, ns)
	as := func(name string, rules []rbacv1.PolicyRule) (kubernetes.Interface, metadata.Interface) {
		t.Helper()
		// get on nodes is in every variant of the rules.
		cfg := env.BoundServiceAccount(t, ns, "snapshot-"+name, rules, authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes"})
		return kubernetes.NewForConfigOrDie(cfg), metadata.NewForConfigOrDie(cfg)
	}
	complete := func(name string, rules []rbacv1.PolicyRule) (bool, string) {
		cs, meta := as(name, rules)
		reply, err := newStep(t, cs, meta, t.TempDir())(ctx, incident(t, pod, "inc-"+name))
		if err != nil {
			return false, err.Error()
		}
		if reply.Type() != events.StepDone(snapshot.Name) {
			return false, fmt.Sprintf("%s %s", reply.Type(), reply.Data())
		}
		var res snapshot.Result
		must(t, json.Unmarshal(reply.Data(), &res))
		for part, why := range res.Unavailable {
			if part != "logs/app.log" && part != "flight-recorder.json" || strings.Contains(why, "forbidden") {
				return false, fmt.Sprintf("%s unavailable: %s", part, why)
			}
		}
		var owners []metav1.PartialObjectMetadata
		data, err := os.ReadFile(filepath.Join(res.Bundle, "owners.json"))
		must(t, err)
		must(t, json.Unmarshal(data, &owners))
		if len(owners) != 2 {
			return false, fmt.Sprintf("owner chain of %d", len(owners))
		}
		return true, ""
	}
	declared := snapshot.Definition().Spec.ClusterRules
	if ok, detail := complete("exact", declared); !ok {
		t.Fatalf("with its declared rules: %s", detail)
	}
	n := 0
	for ri, r := range declared {
		if slices.Contains(r.Resources, "nodes") || slices.Contains(r.APIGroups, "batch") || slices.Contains(r.APIGroups, api.Group) {
			// the sensor's node; a Deployment's pod has no Job owner; the
			// sensor, not the API server, checks sensors.parry.dev (its
			// TestAPIAuthInCluster)
			continue
		}
		for _, res := range r.Resources {
			if res == "daemonsets" || res == "statefulsets" {
				continue // owners of other pods
			}
			for _, verb := range r.Verbs {
				n++
				rules := make([]rbacv1.PolicyRule, 0, len(declared)+1)
				for i := range declared {
					if i != ri {
						rules = append(rules, *declared[i].DeepCopy())
					}
				}
				if others := slices.DeleteFunc(slices.Clone(r.Resources), func(x string) bool { return x == res }); len(others) > 0 {
					rules = append(rules, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: others, Verbs: r.Verbs})
				}
				if verbs := slices.DeleteFunc(slices.Clone(r.Verbs), func(x string) bool { return x == verb }); len(verbs) > 0 {
					rules = append(rules, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: []string{res}, Verbs: verbs})
				}
				if ok, _ := complete(fmt.Sprint("without-", n), rules); ok {
					t.Errorf("without %s on %s the bundle is still complete: the Spec declares a verb it does not need", verb, res)
				}
			}
		}
	}
}
