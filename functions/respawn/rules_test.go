package respawn_test

import (
	"fmt"
	"slices"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/functions/respawn"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/tests/devenv"
)

// asRules is a client of a new ServiceAccount bound to exactly rules.
func asRules(t *testing.T, env *devenv.Env, ns, name string, rules []rbacv1.PolicyRule) kubernetes.Interface {
	t.Helper()
	// get on pods is in every variant of the rules.
	cfg := env.BoundServiceAccount(t, ns, "respawn-"+name, rules, authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods", Namespace: ns})
	return kubernetes.NewForConfigOrDie(cfg)
}

// respawn orphans and replaces a Deployment's pod with exactly the rules its
// Spec declares, and declares no read of a workload controller it does not
// make: without any one verb on apps resources the step fails.
func TestDeclaredRulesAreAllNeeded(t *testing.T) {
	env := devenv.Require(t)
	admin := kubernetes.NewForConfigOrDie(env.RESTConfig())
	ctx := t.Context()
	declared := respawn.Definition().Spec.ClusterRules
	run := func(name string, rules []rbacv1.PolicyRule) (done bool, detail string) {
		ns := "respawn-rules-" + name
		pods := devenv.WebDeployment(t, admin, ns, 2)
		reply, err := newStep(t, asRules(t, env, ns, name, rules), playbooks{})(ctx, cause(t, pods[0], events.StepDone("isolate"), "inc-"+name))
		if err != nil {
			return false, err.Error()
		}
		return reply != nil && reply.Type() == events.StepDone(respawn.Name), fmt.Sprintf("%s %s", reply.Type(), reply.Data())
	}
	if done, detail := run("exact", declared); !done {
		t.Fatalf("with its declared rules: %s", detail)
	}
	n := 0
	for ri, r := range declared {
		if !slices.Contains(r.APIGroups, "apps") {
			continue
		}
		for _, res := range r.Resources {
			for _, verb := range r.Verbs {
				n++
				rules := make([]rbacv1.PolicyRule, 0, len(declared)+1)
				for i := range declared {
					if i != ri {
						rules = append(rules, *declared[i].DeepCopy())
					}
				}
				// r without (res, verb): its other resources keep all verbs,
				// res keeps the others.
				if others := slices.DeleteFunc(slices.Clone(r.Resources), func(x string) bool { return x == res }); len(others) > 0 {
					rules = append(rules, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: others, Verbs: r.Verbs})
				}
				if verbs := slices.DeleteFunc(slices.Clone(r.Verbs), func(x string) bool { return x == verb }); len(verbs) > 0 {
					rules = append(rules, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: []string{res}, Verbs: verbs})
				}
				if done, _ := run(fmt.Sprint("without-", n), rules); done {
					t.Errorf("without %s on %s the step still succeeds: the Spec declares a verb it does not need", verb, res)
				}
			}
		}
	}
}
