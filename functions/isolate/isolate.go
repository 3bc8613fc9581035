package isolate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/step"
)

// Name is the step's name: its Knative Service and its event types.
const Name = "isolate"

// Definition declares the step and builds it: the in-kernel block goes
// through the node's sensor (Deps.Sensors, nil where none runs: the block is
// then reported as not applied), the label and policy through Deps.Kube
// (nil without a cluster: reported as skipped).
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(_ context.Context, d step.Deps) (step.Action, error) {
		return (&isolator{kube: d.Kube, sensors: d.Sensors, now: time.Now}).act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Cut one pod off the network: in-kernel connect block on its node, quarantine label, and a deny-all NetworkPolicy for the incident's pods.",
		Params: []step.Param{
			{Name: "allowEgress", Type: step.StringList, Description: `egress the quarantined pod keeps: "dns" (port 53 to kube-dns) or "CIDR:port" (e.g. a forensics collector 10.0.0.5/32:443)`},
			{Name: "kernelBlock", Type: step.Bool, Default: "true", Description: "also block connects in the kernel on the pod's node (at once, whatever the CNI enforces)"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}},
			// create only: an existing policy of the same incident is AlreadyExists, which is success.
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
			// The node sensor's egress block (sensor/api: the sensor asks the API server).
			{APIGroups: []string{"parry.dev"}, Resources: []string{"sensors/block"}, Verbs: []string{"update"}},
		},
		Example: `- name: isolate
  function: isolate
  params:
    allowEgress: [dns]`,
		Target:   step.TargetPod,
		Playbook: true,
		DryRun:   true,
		Sensors:  true,
		// Retries outlast an API server restart (7 retries from 200 ms span
		// 25 s of backoff); an attempt makes a few quick API calls.
		Delivery: step.Delivery{Retry: 7, Backoff: 200 * time.Millisecond, Timeout: 15 * time.Second},
	}
}

// noCluster is why Kubernetes writes were skipped under parry run without
// a cluster; the in-kernel block still applies.
const noCluster = "skipped: no Kubernetes cluster (KUBECONFIG is unset); only the in-kernel block applies"

type isolator struct {
	kube    kubernetes.Interface
	sensors step.SensorLocator
	now     func() time.Time
}

// Result is the reply's data.
type Result struct {
	Namespace     string    `json:"namespace"`
	Pod           string    `json:"pod"`
	PodUID        string    `json:"podUID"`
	Node          string    `json:"node,omitempty"`
	DryRun        bool      `json:"dryRun,omitempty"`
	KernelBlock   string    `json:"kernelBlock"`
	KernelBlockAt time.Time `json:"kernelBlockAt,omitzero"`
	Label         string    `json:"label"`
	NetworkPolicy string    `json:"networkPolicy"`
	PolicyAt      time.Time `json:"networkPolicyAt,omitzero"`
	PodGone       bool      `json:"podGone,omitempty"`
	// Kubernetes says why the label and policy were skipped, if they were.
	Kubernetes string `json:"kubernetes,omitempty"`
	// Intended holds, with dryRun, the exact objects that would be written.
	Intended []any `json:"intended,omitempty"`
}

// act isolates the pod an incident names. The runtime has checked the pod
// against the API server (its namespace, name, UID and node are the API
// server's), the incident's seal, the protected namespaces and the breaker,
// so the in-kernel block, the fast path (the goal is < 10 ms from the
// kernel event), goes first and then the label and the policy.
func (s *isolator) act(ctx context.Context, r *step.Request) (any, error) {
	p, incident := r.Pod, r.Incident
	res := Result{Namespace: p.Namespace, Pod: p.Name, PodUID: p.UID, Node: p.Node, DryRun: r.DryRun,
		Label: labels.Quarantine + "=" + labels.Value(incident), NetworkPolicy: policyName(incident), KernelBlock: "off"}
	if p.Gone {
		res.PodGone = true
		res.Kubernetes = fmt.Sprintf("skipped: the API server has no pod %s/%s with UID %s (gone, or the event does not name a pod that exists)", p.Namespace, p.Name, p.UID)
		return res, nil
	}
	policy, err := quarantinePolicy(p.Namespace, incident, r.Params().List("allowEgress"))
	if err != nil {
		return nil, step.Fail("%v", err)
	}
	patch := labelPatch(p.UID, incident, s.now())
	if r.DryRun {
		res.KernelBlock = "dry-run"
		res.Intended = []any{map[string]any{"patch": fmt.Sprintf("pods/%s/%s", p.Namespace, p.Name), "mergePatch": json.RawMessage(patch)}, policy}
		return res, nil
	}
	if r.Params().Bool("kernelBlock") {
		res.KernelBlock, res.KernelBlockAt = s.blockInKernel(ctx, r, p.Node, p.UID)
	}
	if s.kube == nil {
		res.Kubernetes = noCluster
		return res, nil
	}
	_, err = s.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-isolate"})
	switch {
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// Conflict: the patch's uid precondition failed, so the name now
		// belongs to another pod, which must not be quarantined.
		res.PodGone = true
	case apierrors.IsForbidden(err):
		return nil, step.Fail("RBAC: %v", err)
	case err != nil:
		return nil, transient(err, "labelling pod %s/%s", p.Namespace, p.Name)
	}
	_, err = s.kube.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, policy, metav1.CreateOptions{FieldManager: "parry-isolate"})
	switch {
	case err == nil, apierrors.IsAlreadyExists(err):
		res.PolicyAt = s.now()
	case apierrors.IsForbidden(err):
		return nil, step.Fail("RBAC: %v", err)
	default:
		return nil, transient(err, "creating NetworkPolicy %s/%s", p.Namespace, policy.Name)
	}
	return res, nil
}

// blockInKernel asks the node's sensor to refuse the pod's connects. A
// failure is reported in the reply, not fatal: the label and the policy
// still isolate the pod where the CNI enforces them.
func (s *isolator) blockInKernel(ctx context.Context, r *step.Request, node, podUID string) (string, time.Time) {
	if s.sensors == nil {
		return "unavailable: no sensor is configured", time.Time{}
	}
	c, err := s.sensors(ctx, node)
	if err == nil {
		err = c.BlockPod(ctx, podUID)
	}
	if err != nil {
		r.Log.Warn().Err(err).Str("node", node).Msg("in-kernel block not applied")
		return "failed: " + err.Error(), time.Time{}
	}
	return "applied", s.now()
}

func transient(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w (retried per the Trigger's delivery spec)", append(args, err)...)
}

// labelPatch carries the pod's UID, which the API server checks as a
// precondition: a successor of the same name is never labelled.
func labelPatch(uid, incident string, at time.Time) []byte {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         uid,
		"labels":      map[string]string{labels.Quarantine: labels.Value(incident)},
		"annotations": map[string]string{labels.Incident: incident, labels.QuarantinedAt: at.UTC().Format(time.RFC3339Nano)},
	}})
	return patch
}

func policyName(incident string) string {
	name := "parry-quarantine-" + strings.ToLower(labels.Value(incident))
	if len(name) > 253 {
		name = name[:253]
	}
	return strings.Trim(strings.ReplaceAll(name, "_", "-"), "-.")
}

// quarantinePolicy denies all ingress and egress of the incident's
// quarantined pods but the allow-list.
func quarantinePolicy(ns, incident string, allow []string) (*networkingv1.NetworkPolicy, error) {
	var egress []networkingv1.NetworkPolicyEgressRule
	for _, a := range allow {
		rule, err := egressRule(a)
		if err != nil {
			return nil, fmt.Errorf("allowEgress %q: %w", a, err)
		}
		egress = append(egress, rule)
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta: metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: policyName(incident), Namespace: ns,
			Labels:      map[string]string{labels.PartOf: labels.PartOfParry},
			Annotations: map[string]string{labels.Incident: incident}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{labels.Quarantine: labels.Value(incident)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Egress:      egress,
		},
	}, nil
}

func egressRule(allow string) (networkingv1.NetworkPolicyEgressRule, error) {
	if allow == "dns" {
		udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
		port := intstr.FromInt32(53)
		return networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
			}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &port}, {Protocol: &tcp, Port: &port}},
		}, nil
	}
	cidr, portText, hasPort := strings.Cut(allow, ":")
	if _, _, err := net.ParseCIDR(cidr); err != nil {
		return networkingv1.NetworkPolicyEgressRule{}, errors.New(`want "dns" or "CIDR[:port]", e.g. 10.0.0.5/32:443`)
	}
	rule := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}}}
	if hasPort {
		p, err := strconv.Atoi(portText)
		if err != nil || p < 1 || p > 65535 {
			return rule, fmt.Errorf("port %q: want 1-65535", portText)
		}
		port := intstr.FromInt(p)
		tcp := corev1.ProtocolTCP
		rule.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}
	}
	return rule, nil
}

// Applied says what isolate changed, for the trace.
func (r Result) Applied() []string {
	if r.DryRun {
		return nil
	}
	var out []string
	if r.KernelBlock == "applied" {
		out = append(out, fmt.Sprintf("in-kernel egress block of pod %s on node %s at %s", r.PodUID, r.Node, r.KernelBlockAt.UTC().Format(time.RFC3339Nano)))
	}
	if r.Kubernetes == "" && !r.PodGone {
		out = append(out, fmt.Sprintf("label %s on pod %s/%s", r.Label, r.Namespace, r.Pod))
	}
	if !r.PolicyAt.IsZero() {
		out = append(out, fmt.Sprintf("NetworkPolicy %s/%s (deny all but the allow-list) at %s", r.Namespace, r.NetworkPolicy, r.PolicyAt.UTC().Format(time.RFC3339Nano)))
	}
	return out
}
