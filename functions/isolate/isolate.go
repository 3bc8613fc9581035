package isolate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/sensor/client"
)

// Name is the step's name: its Knative Service and its event types.
const Name = "isolate"

// Labels and annotations isolate writes.
const (
	QuarantineLabel  = "parry.dev/quarantine"
	IncidentAnnot    = "parry.dev/incident"
	QuarantinedAnnot = "parry.dev/quarantined-at"
)

// Spec declares the step.
func Spec() function.Spec {
	return function.Spec{
		Name:        Name,
		Description: "Cut one pod off the network: in-kernel connect block on its node, quarantine label, and a deny-all NetworkPolicy for the incident's pods.",
		Params: []function.Param{
			{Name: "allowEgress", Type: function.StringList, Description: `egress the quarantined pod keeps: "dns" (port 53 to kube-dns) or "CIDR:port" (e.g. a forensics collector 10.0.0.5/32:443)`},
			{Name: "kernelBlock", Type: function.Bool, Default: "true", Description: "also block connects in the kernel on the pod's node (at once, whatever the CNI enforces)"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "create"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		},
		Example: `- name: isolate
  function: isolate
  params:
    allowEgress: [dns]`,
	}
}

// noCluster is why Kubernetes writes were skipped under parry run without
// a cluster; the in-kernel block still applies.
const noCluster = "skipped: no Kubernetes cluster (KUBECONFIG is unset); only the in-kernel block applies"

// SensorLocator returns the API of the sensor on a node.
type SensorLocator func(ctx context.Context, node string) (*client.Client, error)

// Isolator is the isolate step with its clients.
type Isolator struct {
	kube      kubernetes.Interface
	sensors   SensorLocator
	playbooks function.Playbooks
	guard     *guard.Guard
	log       zerolog.Logger
	now       func() time.Time
}

// New returns the step. sensors may be nil where no sensor runs; the kernel
// block is then reported as not applied. kube may be nil without a cluster;
// the label and policy are then reported as skipped.
func New(kube kubernetes.Interface, sensors SensorLocator, playbooks function.Playbooks, log zerolog.Logger) *Isolator {
	return &Isolator{kube: kube, sensors: sensors, playbooks: playbooks, guard: guard.New(), log: log.With().Str("component", Name).Logger(), now: time.Now}
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

// Handle isolates the pod an incident names.
func (s *Isolator) Handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	ns, name, uid := events.String(e, events.ExtPodNamespace), events.String(e, events.ExtPodName), events.String(e, events.ExtPodUID)
	incident, playbook := events.String(e, events.ExtIncident), events.String(e, events.ExtPlaybook)
	if incident == "" || (uid == "" && (ns == "" || name == "")) {
		return s.failed(e, "the event names no pod (poduid, or podns and podname) or no incident: nothing to isolate")
	}
	cfg, err := s.playbooks.StepConfig(playbook, Name)
	if err != nil {
		return s.failed(e, fmt.Sprintf("playbook %q: %v", playbook, err))
	}
	res := Result{Namespace: ns, Pod: name, PodUID: uid, Node: events.String(e, events.ExtNode), DryRun: cfg.DryRun,
		Label: QuarantineLabel + "=" + labelValue(incident), NetworkPolicy: policyName(incident), KernelBlock: "off"}

	// The in-kernel block is the fast path (the goal is < 10 ms
	// from the kernel event): it needs only the pod UID the sensor put in
	// the event, so it goes first, once the namespace and the breaker allow
	// acting; the pod's labels (is it parry's own?) are checked after, and
	// the block is lifted if they forbid it.
	target := guard.Target{Playbook: playbook, Incident: incident, Namespace: ns}
	if r := s.guard.Admit(target, cfg.Guard); r != nil {
		return s.failed(e, r.Reason)
	}
	policy, err := quarantinePolicy(ns, incident, cfg.Params.List("allowEgress"))
	if err != nil {
		return s.failed(e, err.Error())
	}
	patch := labelPatch(incident, s.now())
	if cfg.DryRun {
		res.KernelBlock = "dry-run"
		res.Intended = []any{map[string]any{"patch": fmt.Sprintf("pods/%s/%s", ns, name), "mergePatch": json.RawMessage(patch)}, policy}
		return s.done(e, res)
	}
	blocked := false
	if cfg.Params.Bool("kernelBlock") && uid != "" {
		res.KernelBlock, res.KernelBlockAt = s.blockInKernel(ctx, res.Node, uid)
		blocked = res.KernelBlock == "applied"
	}

	var pod *corev1.Pod
	switch {
	case s.kube == nil:
		res.Kubernetes = noCluster
	case ns == "" || name == "":
		// Attributed from the cgroup path only (the sensor knows no pod
		// metadata): the kernel block is all that can be done.
		res.Kubernetes = "skipped: the event names the pod by UID only (no podns, podname); only the in-kernel block applies"
	default:
		pod, err = s.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	}
	switch {
	case res.Kubernetes != "":
	case apierrors.IsNotFound(err):
		res.PodGone = true
	case err != nil:
		return nil, s.transient(err, "reading pod %s/%s", ns, name)
	default:
		if uid == "" {
			res.PodUID = string(pod.UID)
		} else if string(pod.UID) != uid {
			// Same name, another pod: the incident's pod is gone and must
			// not be confused with its successor.
			res.PodGone = true
		}
		if res.Node == "" {
			res.Node = pod.Spec.NodeName
		}
		if !res.PodGone {
			target.PodLabels = pod.Labels
			if r := s.guard.Admit(target, cfg.Guard); r != nil {
				if blocked {
					s.unblock(ctx, res.Node, uid)
				}
				return s.failed(e, r.Reason)
			}
		}
	}
	if cfg.Params.Bool("kernelBlock") && uid == "" && res.PodUID != "" {
		res.KernelBlock, res.KernelBlockAt = s.blockInKernel(ctx, res.Node, res.PodUID)
	}
	if res.Kubernetes != "" {
		return s.done(e, res)
	}
	if !res.PodGone {
		_, err := s.kube.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "parry-isolate"})
		switch {
		case apierrors.IsNotFound(err):
			res.PodGone = true
		case apierrors.IsForbidden(err):
			return s.failed(e, "RBAC: "+err.Error())
		case err != nil:
			return nil, s.transient(err, "labelling pod %s/%s", ns, name)
		}
	}
	_, err = s.kube.NetworkingV1().NetworkPolicies(ns).Create(ctx, policy, metav1.CreateOptions{FieldManager: "parry-isolate"})
	switch {
	case err == nil, apierrors.IsAlreadyExists(err):
		res.PolicyAt = s.now()
	case apierrors.IsForbidden(err):
		return s.failed(e, "RBAC: "+err.Error())
	default:
		return nil, s.transient(err, "creating NetworkPolicy %s/%s", ns, policy.Name)
	}
	return s.done(e, res)
}

// blockInKernel asks the node's sensor to refuse the pod's connects. A
// failure is reported in the reply, not fatal: the label and the policy
// still isolate the pod where the CNI enforces them.
func (s *Isolator) blockInKernel(ctx context.Context, node, podUID string) (string, time.Time) {
	if s.sensors == nil {
		return "unavailable: no sensor is configured", time.Time{}
	}
	c, err := s.sensors(ctx, node)
	if err == nil {
		err = c.BlockPod(ctx, podUID)
	}
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Str("pod_uid", podUID).Msg("in-kernel block not applied")
		return "failed: " + err.Error(), time.Time{}
	}
	return "applied", s.now()
}

// unblock lifts a block that a later check forbade.
func (s *Isolator) unblock(ctx context.Context, node, podUID string) {
	c, err := s.sensors(ctx, node)
	if err == nil {
		err = c.UnblockPod(ctx, podUID)
	}
	if err != nil {
		s.log.Error().Err(err).Str("pod_uid", podUID).Msg("could not lift an in-kernel block on a pod parry must not act on")
	}
}

func (s *Isolator) done(cause cloudevents.Event, res Result) (*cloudevents.Event, error) {
	return function.Done(cause, Name, res)
}

func (s *Isolator) failed(cause cloudevents.Event, reason string) (*cloudevents.Event, error) {
	s.log.Warn().Str("event_id", cause.ID()).Str("incident", events.String(cause, events.ExtIncident)).Str("reason", reason).Msg("not isolating")
	return function.Failed(cause, Name, reason)
}

func (s *Isolator) transient(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w (retried per the Trigger's delivery spec)", append(args, err)...)
}

func labelPatch(incident string, at time.Time) []byte {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":      map[string]string{QuarantineLabel: labelValue(incident)},
		"annotations": map[string]string{IncidentAnnot: incident, QuarantinedAnnot: at.UTC().Format(time.RFC3339Nano)},
	}})
	return patch
}

var notLabelChar = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// labelValue makes an incident id a valid label value (≤ 63 characters of
// [A-Za-z0-9._-], alphanumeric at both ends).
func labelValue(incident string) string {
	v := notLabelChar.ReplaceAllString(incident, "-")
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.Trim(v, "-._")
}

func policyName(incident string) string {
	name := "parry-quarantine-" + strings.ToLower(labelValue(incident))
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
			Labels:      map[string]string{guard.PartOfLabel: "parry"},
			Annotations: map[string]string{IncidentAnnot: incident}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{QuarantineLabel: labelValue(incident)}},
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
