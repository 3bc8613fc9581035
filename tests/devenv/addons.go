package devenv

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Cluster add-ons of the real node: CoreDNS, then Knative Eventing.

// startCoreDNS runs CoreDNS as a Deployment behind kube-dns at the
// cluster DNS address. Knative's broker and channel addresses are
// *.svc.cluster.local names, so pods need it.
func (e *Env) startCoreDNS(ctx context.Context) error {
	began := time.Now()
	manifest := strings.NewReplacer("IMAGE", e.Images["coredns"], "DNSIP", clusterDNS).Replace(corednsManifest)
	if _, err := e.Kubectl(ctx, manifest, "apply", "--server-side", "-f", "-"); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		return err
	}
	if err := waitDeployments(ctx, cs, "kube-system", []string{"coredns"}, e.opts.ReadyTimeout); err != nil {
		return err
	}
	e.logf("devenv: CoreDNS ready at %s in %s", clusterDNS, time.Since(began).Round(10*time.Millisecond))
	return nil
}

// No forward plugin: names outside cluster.local fail, and pods never
// reach a resolver beyond this host.
const corednsManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: IMAGE
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 10}
        resources: {requests: {cpu: 10m, memory: 32Mi}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: DNSIP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
`

// KnativeNamespace is where Knative Eventing's components run.
const KnativeNamespace = "knative-eventing"

var koRef = regexp.MustCompile(`ko://knative\.dev/eventing/cmd/([a-z_/]+)`)

// installKnative installs Knative Eventing v0.50.0 from its release YAML
// (tools/eventing packs it beside the binaries) with every ko:// image
// replaced by the local one, in the order that works: the CRDs, then the
// rest, then a bounded wait for the webhook (a Broker or Trigger created
// before it serves is never defaulted nor reconciled), then for every
// component.
func (e *Env) installKnative(ctx context.Context) error {
	began := time.Now()
	crds, rest, err := e.knativeManifests()
	if err != nil {
		return err
	}
	if _, err := e.Kubectl(ctx, crds, "apply", "--server-side", "-f", "-"); err != nil {
		return fmt.Errorf("devenv: Knative Eventing CRDs: %w", err)
	}
	if _, err := e.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		return fmt.Errorf("devenv: Knative Eventing CRDs not established: %w", err)
	}
	if _, err := e.Kubectl(ctx, rest, "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return fmt.Errorf("devenv: Knative Eventing components: %w", err)
	}
	cs, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		return err
	}
	if err := waitDeployments(ctx, cs, KnativeNamespace, []string{"eventing-webhook"}, e.opts.KnativeTimeout); err != nil {
		return fmt.Errorf("%w\n(Brokers and Triggers created before the webhook serves are never reconciled)", err)
	}
	e.logf("devenv: Knative Eventing's webhook ready after %s", time.Since(began).Round(10*time.Millisecond))
	deps, err := cs.AppsV1().Deployments(KnativeNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var names []string
	for _, d := range deps.Items {
		if d.Spec.Replicas == nil || *d.Spec.Replicas > 0 {
			names = append(names, d.Name)
		}
	}
	if err := waitDeployments(ctx, cs, KnativeNamespace, names, e.opts.KnativeTimeout); err != nil {
		return err
	}
	e.logf("devenv: Knative Eventing ready in %s (%s)", time.Since(began).Round(10*time.Millisecond), strings.Join(names, ", "))
	return nil
}

// knativeManifests reads the release YAML and splits it into the CRDs and
// everything else, images rewritten.
func (e *Env) knativeManifests() (crds, rest string, err error) {
	f, err := os.Open(e.bins.knativeConfig)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	files := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("devenv: %s: %w", e.bins.knativeConfig, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return "", "", err
		}
		files[h.Name] = string(b)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	// config/core first: it creates the namespace the others live in.
	rank := func(n string) int {
		for i, p := range []string{"config/core/", "config/channels/", "config/brokers/"} {
			if strings.HasPrefix(n, p) {
				return i
			}
		}
		return 3
	}
	sort.Slice(names, func(i, j int) bool {
		if ri, rj := rank(names[i]), rank(names[j]); ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})
	var missing []string
	var c, r strings.Builder
	for _, n := range names {
		text := koRef.ReplaceAllStringFunc(files[n], func(m string) string {
			name := filepath.Base(koRef.FindStringSubmatch(m)[1])
			ref, ok := e.Images["knative/"+name]
			if !ok {
				missing = append(missing, m)
				return m
			}
			return ref
		})
		for _, doc := range strings.Split("\n"+text, "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			dst := &r
			if strings.Contains(doc, "\nkind: CustomResourceDefinition") {
				dst = &c
			}
			dst.WriteString("---\n# " + n + "\n" + strings.TrimLeft(doc, "\n") + "\n")
		}
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("devenv: Knative's YAML names images tools/eventing does not build: %s (add the command to tools/eventing and knativeCommands)", strings.Join(missing, ", "))
	}
	return c.String(), r.String(), nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// waitDeployments waits until each named Deployment has all its replicas
// available; on timeout the error names each one that is not, with its
// pods' states (ImagePullBackOff, CrashLoopBackOff and their messages).
func waitDeployments(ctx context.Context, cs kubernetes.Interface, ns string, names []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var pending []string
		for _, n := range names {
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, n, metav1.GetOptions{})
			if err != nil || !deploymentAvailable(d) {
				pending = append(pending, n)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("devenv: deployments in %s not available within %s: %s\n%s", ns, timeout, strings.Join(pending, ", "), podReport(ctx, cs, ns))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= want && d.Status.AvailableReplicas >= want
}

// podReport describes the pods of ns that are not ready, with the reason
// each container waits or last terminated.
func podReport(ctx context.Context, cs kubernetes.Interface, ns string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "(pods: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, p := range pods.Items {
		if podReady(&p) {
			continue
		}
		fmt.Fprintf(&b, "  pod %s: %s", p.Name, p.Status.Phase)
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue && c.Message != "" {
				fmt.Fprintf(&b, "; %s: %s", c.Type, c.Message)
			}
		}
		for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if w := s.State.Waiting; w != nil {
				fmt.Fprintf(&b, "; %s waiting: %s %s", s.Name, w.Reason, w.Message)
			}
			if t := s.LastTerminationState.Terminated; t != nil {
				fmt.Fprintf(&b, "; %s last exit %d (%s): %s", s.Name, t.ExitCode, t.Reason, strings.TrimSpace(t.Message))
			}
		}
		b.WriteString("\n")
	}
	if b.Len() == 0 {
		return "  (every pod is ready; the Deployments have not caught up)"
	}
	return b.String()
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// NotReadyError is a Knative object that did not become Ready: Reason and
// Message are its Ready condition's (Knative's own words, e.g.
// "BrokerDoesNotExist"), empty if it has no status at all.
type NotReadyError struct {
	Resource, Namespace, Name string
	Reason, Message           string
	Timeout                   time.Duration
}

func (e *NotReadyError) Error() string {
	if e.Reason == "" && e.Message == "" {
		return fmt.Sprintf("devenv: %s %s/%s has no Ready condition after %s: no Knative controller reconciled it (created before eventing-webhook served?)", e.Resource, e.Namespace, e.Name, e.Timeout)
	}
	return fmt.Sprintf("devenv: %s %s/%s not Ready after %s: %s: %s", e.Resource, e.Namespace, e.Name, e.Timeout, e.Reason, e.Message)
}

// WaitKnativeReady waits until the Knative Eventing object
// (eventing.knative.dev/v1 resource "brokers", "triggers", ...) ns/name is
// Ready, or returns a *NotReadyError carrying the reason Knative gives.
func (e *Env) WaitKnativeReady(ctx context.Context, resource, ns, name string, timeout time.Duration) error {
	dc, err := dynamic.NewForConfig(e.RESTConfig())
	if err != nil {
		return err
	}
	gvr := schema.GroupVersionResource{Group: "eventing.knative.dev", Version: "v1", Resource: resource}
	nr := &NotReadyError{Resource: strings.TrimSuffix(resource, "s"), Namespace: ns, Name: name, Timeout: timeout}
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		obj, err := dc.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("devenv: get %s %s/%s: %w", resource, ns, name, err)
		}
		conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] != "Ready" {
				continue
			}
			if m["status"] == "True" {
				return nil
			}
			nr.Reason, _ = m["reason"].(string)
			nr.Message, _ = m["message"].(string)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nr
		}
	}
}
