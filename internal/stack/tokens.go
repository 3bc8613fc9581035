package stack

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
)

// parry run has no API server to review tokens, so its callers carry tokens
// of a local file instead (auth.TokenFile), one per identity, named as in a
// cluster: the steps' and the sensor's ServiceAccount usernames, and the
// operator at the keyboard.
const (
	// TokenFile is the local token file's name in the state directory
	// (beside the journal), mode 0600.
	TokenFile = "tokens"
	// Operator is the identity of whoever reads the token file: the
	// person running parry run and its CLI (parry incident close). It
	// has what config/'s ClusterRole parry-incident-closer grants.
	Operator = playbook.LocalOperator
)

// StepUser is the identity of a step: its ServiceAccount in parry-system.
func StepUser(s step.Spec) string {
	return auth.ServiceAccountUser(playbook.Namespace, s.ServiceAccount())
}

// LocalIdentities are the identities parry run gives tokens to: the
// sensor, every step, the operator, and the adapters of other tools
// (parry ingest falco, parry ingest tetragon, pointed at parry run's
// ingress with their token).
func LocalIdentities(steps []step.Definition) []string {
	users := []string{SensorSender(), Operator, FalcoAdapter(), TetragonIngest()}
	for _, d := range steps {
		users = append(users, StepUser(d.Spec))
	}
	slices.Sort(users)
	return slices.Compact(users)
}

// EnsureLocalTokens makes sure stateDir's token file holds a token for
// each user (keeping those it has) and returns the tokens by user and the
// authenticator of the whole file.
func EnsureLocalTokens(stateDir string, users []string) (map[string]string, *auth.TokenFile, error) {
	path := filepath.Join(stateDir, TokenFile)
	tokens, err := auth.EnsureTokenFile(path, users...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (parry run keeps its local tokens beside the journal: pass --journal in a directory you own)", err)
	}
	f, err := auth.LoadTokenFile(path)
	if err != nil {
		return nil, nil, err
	}
	return tokens, f, nil
}

// SensorGrants are, for the local sensor, exactly the grants config/ makes
// in a cluster: each step the subresources of sensors.parry.dev its Spec's
// ClusterRules name (isolate block, snapshot history), and the operator
// what parry-incident-closer grants (unblock and history).
func SensorGrants(steps []step.Definition) auth.Static {
	g := auth.Static{Operator: {sensor.APIAccess(api.SubresourceUnblock, ""), sensor.APIAccess(api.SubresourceHistory, "")}}
	for _, d := range steps {
		for _, r := range d.Spec.ClusterRules {
			if !slices.Contains(r.APIGroups, api.Group) {
				continue
			}
			for _, res := range r.Resources {
				sub, ok := strings.CutPrefix(res, api.Resource+"/")
				if ok && slices.Contains(r.Verbs, api.VerbOf(sub)) {
					g[StepUser(d.Spec)] = append(g[StepUser(d.Spec)], sensor.APIAccess(sub, ""))
				}
			}
		}
	}
	return g
}

// FalcoAdapter is the identity parry ingest falco sends with.
func FalcoAdapter() string {
	return auth.ServiceAccountUser(playbook.Namespace, playbook.FalcoAdapterServiceAccount)
}

// TetragonIngest is the identity parry ingest tetragon sends with.
func TetragonIngest() string {
	return auth.ServiceAccountUser(playbook.TetragonIngestNamespace, playbook.TetragonIngestServiceAccount)
}
