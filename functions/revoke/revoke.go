package revoke

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
)

// Name is the step's name: the Knative Service and the <name> in its reply
// types.
const Name = "revoke"

// Modes.
const (
	ModePod            = "pod"
	ModeServiceAccount = "serviceaccount"
	ModePrefix         = "prefix"
)

// Token metadata keys the step matches on. The jwt role's claim_mappings
// (see README.md) and the kubernetes auth method produce them.
const (
	MetaPodUID      = "pod_uid"
	MetaSANamespace = "service_account_namespace"
	MetaSAName      = "service_account_name"
)

// Definition declares the step and builds it. Deps.Vault carries the step's
// own Vault token (see policy.hcl for exactly what it may do); Deps.Kube
// reads the pod the event names. Kube is optional: without it, pod mode
// works from the event's poduid extension alone, and the modes that need
// the pod (serviceaccount, an expected service account) fail with a reason
// saying so.
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(_ context.Context, d step.Deps) (step.Action, error) {
		if d.Vault == nil {
			return nil, errors.New("no Vault client; set VAULT_ADDR and VAULT_TOKEN (or VAULT_K8S_ROLE in a cluster)")
		}
		return (&revoker{vault: d.Vault, kube: d.Kube}).act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Revoke the Vault tokens (and, through them, the dynamic secrets) of the pod the event names, or every lease under a path; wait until Vault reports the leases gone.",
		Params: []step.Param{
			{Name: "mode", Type: step.String, Enum: []string{ModePod, ModeServiceAccount, ModePrefix}, Default: ModePod,
				Description: "pod: tokens whose metadata pod_uid is the pod's UID; serviceaccount: every token of the pod's service account (every pod of it loses its credentials); prefix: every lease under a path"},
			{Name: "mounts", Type: step.StringList, Default: "auth/jwt/,auth/kubernetes/",
				Description: "auth mount paths whose tokens may be revoked (a token's path must start with one); other tokens are never touched even if their metadata matches"},
			{Name: "prefix", Type: step.String,
				Description: "prefix mode: the lease path to revoke, e.g. database/creds/web/ (at least two segments); only the playbook sets it, never the workload"},
			{Name: "leases", Type: step.StringList,
				Description: "lease paths in which to look for the revoked tokens' child leases, e.g. database/creds/; empty means every lease outside auth/ (costs one lookup per lease)"},
			{Name: "serviceaccount", Type: step.String,
				Description: "the service account the pod must run as; a pod with another one fails the step instead of revoking"},
			{Name: "wait", Type: step.Duration, Default: "30s",
				Description: "how long to wait for Vault to report the revoked leases gone"},
			{Name: "workers", Type: step.Int, Default: "8",
				Description: "concurrent accessor and lease lookups"},
		},
		ClusterRules: ClusterRules(),
		Example: `- name: revoke
  function: revoke
  params:
    mode: pod
    leases: [database/creds/]
    wait: 30s`,
		Target:   step.TargetIncident,
		Playbook: true,
		Vault:    true,
		// An attempt waits up to wait (30 s by default) for Vault to
		// report the leases gone.
		Delivery: step.Delivery{Retry: 6, Backoff: 500 * time.Millisecond, Timeout: 90 * time.Second},
	}
}

// ClusterRules are the step's Kubernetes permissions: it reads the pod the
// event names, for its service account and UID. Nothing else.
func ClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}
}

type revoker struct {
	vault *vaultapi.Client
	kube  kubernetes.Interface
}

// Result is the data of dev.parry.step.revoke.done.v1 (and, with Reason, of
// .failed.v1). Accessors are not secrets: they can look up and revoke a
// token but not use it.
type Result struct {
	Mode           string   `json:"mode"`
	Pod            string   `json:"pod,omitempty"` // namespace/name
	PodUID         string   `json:"podUID,omitempty"`
	ServiceAccount string   `json:"serviceAccount,omitempty"` // namespace/name
	BlastRadius    string   `json:"blastRadius,omitempty"`
	Prefix         string   `json:"prefix,omitempty"`
	TokensScanned  int      `json:"tokensScanned"`
	Accessors      []string `json:"accessorsRevoked"`
	LeasesRevoked  int      `json:"leasesRevoked"`
	LeasesPending  int      `json:"leasesPending"`
	Note           string   `json:"note,omitempty"`
	Reason         string   `json:"reason,omitempty"`
	DurationMS     float64  `json:"durationMs"`
}

// target is what the event and the pod say about the workload.
type target struct {
	ns, name, uid string
	sa            string // the pod's service account, when the pod was read
	prefix        string
}

func failf(format string, a ...any) error { return step.Fail(format, a...) }

// act revokes with the parameters of the event's playbook.
func (r *revoker) act(ctx context.Context, req *step.Request) (any, error) {
	start := time.Now()
	p := req.Params()
	mode := p.String("mode")
	if mode == "" {
		mode = ModePod
	}
	res := Result{Mode: mode, Accessors: []string{}}
	log := req.Log.With().Str("mode", mode).Logger()

	err := r.run(ctx, req.Event, p, &res, log)
	res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	var f *step.Failure
	switch {
	case errors.As(err, &f):
		res.Reason = f.Reason
		f.Data = res
		log.Warn().Strs("accessors", res.Accessors).Msg("revoke failed for good")
		return nil, f
	case err != nil:
		return nil, err
	}
	log.Info().Strs("accessors", res.Accessors).Int("leases_revoked", res.LeasesRevoked).Float64("duration_ms", res.DurationMS).Msg("revoked")
	return res, nil
}

func (r *revoker) run(ctx context.Context, e cloudevents.Event, p step.Params, res *Result, log zerolog.Logger) error {
	mode := res.Mode
	t, err := r.target(ctx, e, p, mode, log)
	if err != nil {
		return err
	}
	if t.ns != "" || t.name != "" {
		res.Pod = t.ns + "/" + t.name
	}
	res.PodUID = t.uid
	workers := max(p.Int("workers"), 1)
	wait := p.Duration("wait")

	if mode == ModePrefix {
		res.Prefix = t.prefix
		return r.revokePrefix(ctx, t.prefix, wait, workers, res)
	}

	var match func(meta map[string]string) bool
	switch mode {
	case ModePod:
		match = func(m map[string]string) bool { return m[MetaPodUID] == t.uid }
	case ModeServiceAccount:
		res.ServiceAccount = t.ns + "/" + t.sa
		res.BlastRadius = fmt.Sprintf("every token of service account %s/%s, of every pod that runs as it, not only %s", t.ns, t.sa, res.Pod)
		match = func(m map[string]string) bool { return m[MetaSANamespace] == t.ns && m[MetaSAName] == t.sa }
	default:
		return failf("unknown mode %q: want pod, serviceaccount or prefix", mode)
	}

	accessors, scanned, err := r.findAccessors(ctx, p.List("mounts"), match, workers)
	res.TokensScanned = scanned
	if err != nil {
		return err
	}
	if len(accessors) == 0 {
		res.Note = "no Vault token matches: nothing to revoke (none was issued, or an earlier delivery revoked them)"
		return nil
	}

	// Snapshot the leases in scope before revoking: afterwards, the revoked
	// tokens' leases are the ones Vault has marked as expiring now.
	scope := p.List("leases")
	before, err := r.listLeases(ctx, scope)
	if err != nil {
		return err
	}
	for _, a := range accessors {
		if _, err := r.vault.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": a}); err != nil {
			if invalidAccessor(err) {
				continue // revoked in the meantime: the goal is reached
			}
			return vaultError(err, "update", "auth/token/revoke-accessor")
		}
		res.Accessors = append(res.Accessors, a)
		log.Info().Str("accessor", a).Msg("token revoked")
	}
	revokedAt := time.Now()
	pending, gone, err := r.childLeases(ctx, before, revokedAt, workers)
	if err != nil {
		return err
	}
	left, err := r.waitGone(ctx, pending, wait, workers)
	if err != nil {
		return err
	}
	res.LeasesRevoked = gone + len(pending) - len(left)
	res.LeasesPending = len(left)
	if len(left) > 0 {
		return failf("revoked %d token(s), but %d of their leases are still in Vault after %s (Vault revokes them asynchronously; check the secrets engine's revocation, e.g. its database connection)", len(res.Accessors), len(left), wait)
	}
	return nil
}

// target reads the workload from the event's extensions and, when the mode
// needs it, the pod from the Kubernetes API.
func (r *revoker) target(ctx context.Context, e cloudevents.Event, p step.Params, mode string, log zerolog.Logger) (target, error) {
	t := target{
		ns:     events.String(e, events.ExtPodNamespace),
		name:   events.String(e, events.ExtPodName),
		uid:    events.String(e, events.ExtPodUID),
		prefix: p.String("prefix"),
	}
	wantSA := p.String("serviceaccount")
	needPod := mode == ModeServiceAccount || wantSA != "" ||
		(mode == ModePod && t.uid == "")
	// The path comes from the playbook alone: a pod annotation would let
	// the workload under attack choose which leases parry revokes.
	if mode == ModePrefix && t.prefix == "" {
		return t, failf("prefix mode needs the prefix parameter: the playbook names the lease path to revoke")
	}
	if !needPod {
		return t, checkTarget(t, mode)
	}
	if t.ns == "" || t.name == "" {
		return t, failf("the event names no pod (extensions %s and %s are empty); mode %s needs one", events.ExtPodNamespace, events.ExtPodName, mode)
	}
	if r.kube == nil {
		return t, failf("mode %s needs pod %s/%s from the Kubernetes API (its service account or UID), but the step runs without a Kubernetes client", mode, t.ns, t.name)
	}
	pod, err := r.kube.CoreV1().Pods(t.ns).Get(ctx, t.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) && mode == ModePod && t.uid != "" && wantSA == "":
		// The pod is gone, its tokens are not: revoke by the event's UID.
		return t, nil
	case apierrors.IsNotFound(err):
		return t, failf("pod %s/%s no longer exists; mode %s needs it (its service account)", t.ns, t.name, mode)
	case apierrors.IsForbidden(err):
		return t, failf("reading pod %s/%s is forbidden: the step's service account needs get on pods (see Spec().ClusterRules): %v", t.ns, t.name, err)
	case err != nil:
		return t, fmt.Errorf("reading pod %s/%s from the Kubernetes API: %w", t.ns, t.name, err)
	}
	if t.uid == "" {
		t.uid = string(pod.UID)
	} else if t.uid != string(pod.UID) {
		// The name now belongs to a replacement; the event's UID is the
		// compromised one. Its service account comes from the same template.
		log.Info().Str("pod", t.ns+"/"+t.name).Msg("pod was replaced since the event; revoking for the event's pod UID")
	}
	t.sa = pod.Spec.ServiceAccountName
	if wantSA != "" && t.sa != wantSA {
		return t, failf("pod %s/%s runs as service account %q, not the expected %q: refusing to revoke", t.ns, t.name, saName(t.sa), wantSA)
	}
	if mode == ModeServiceAccount && (t.sa == "" || t.sa == "default") {
		return t, failf("pod %s/%s has no service account of its own (it runs as %q): revoking every token of %s/default would cut every pod of the namespace that names none; use mode pod or give the workload its own service account", t.ns, t.name, saName(t.sa), t.ns)
	}
	return t, checkTarget(t, mode)
}

func saName(sa string) string {
	if sa == "" {
		return "default"
	}
	return sa
}

func checkTarget(t target, mode string) error {
	switch mode {
	case ModePod:
		if t.uid == "" {
			return failf("the event carries no pod UID (extension %s) and names no pod to read it from", events.ExtPodUID)
		}
	case ModePrefix:
		return checkPrefix(t.prefix)
	}
	return nil
}

// checkPrefix refuses paths that would revoke a whole mount or more: a
// typo must not cut every credential of the cluster.
func checkPrefix(prefix string) error {
	trimmed := strings.Trim(prefix, "/")
	if strings.HasPrefix(prefix, "/") || strings.Contains(prefix, "..") || strings.Count(trimmed, "/") < 1 || slices.Contains(strings.Split(trimmed, "/"), "") {
		return failf("lease prefix %q is not a path of at least two segments such as database/creds/web/", prefix)
	}
	if strings.HasPrefix(trimmed, "sys/") {
		return failf("lease prefix %q is under sys/: not a secrets engine", prefix)
	}
	return nil
}

// revokePrefix revokes every lease under prefix and waits until Vault lists
// none.
func (r *revoker) revokePrefix(ctx context.Context, prefix string, wait time.Duration, workers int, res *Result) error {
	before, err := r.listLeases(ctx, []string{prefix})
	if err != nil {
		return err
	}
	// sync: Vault returns once the backends revoked them (for a database
	// credential: the revocation statements ran).
	path := "sys/leases/revoke-prefix/" + strings.TrimPrefix(prefix, "/")
	if _, err := r.vault.Logical().WriteWithContext(ctx, path, map[string]any{"sync": true}); err != nil {
		return vaultError(err, "update+sudo", path)
	}
	deadline := time.Now().Add(wait)
	for {
		after, err := r.listLeases(ctx, []string{prefix})
		if err != nil {
			return err
		}
		res.LeasesPending = len(after)
		res.LeasesRevoked = max(len(before)-len(after), 0)
		if len(after) == 0 {
			if len(before) == 0 {
				res.Note = "no lease under the prefix: nothing to revoke"
			}
			return nil
		}
		if time.Now().After(deadline) {
			return failf("%d lease(s) under %s are still in Vault after %s", len(after), prefix, wait)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Applied says what revoke revoked, for the trace.
func (r Result) Applied() []string {
	if len(r.Accessors) == 0 && r.LeasesRevoked == 0 {
		return nil
	}
	return []string{fmt.Sprintf("Vault: %d token(s) revoked (accessors %s), %d lease(s) revoked", len(r.Accessors), strings.Join(r.Accessors, ", "), r.LeasesRevoked)}
}
