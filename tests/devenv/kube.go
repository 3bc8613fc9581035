package devenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// The issuer in-cluster clients expect; Vault's jwt auth binds to it.
	saIssuer    = "https://kubernetes.default.svc.cluster.local"
	serviceCIDR = "10.96.0.0/16"
	nodeName    = "kwok-node-0"
	// kwok manages only nodes with this annotation.
	kwokAnnotation = "kwok.x-k8s.io/node"
)

// throwAway is the stop signal of servers whose state is discarded anyway:
// a graceful kube-apiserver drains its watches, and etcd waits for them, for
// several seconds, which every test binary would pay.
const throwAway = syscall.SIGKILL

// pkiFiles are the generated certificates, keys and kubeconfigs.
type pkiFiles struct {
	ca, caKey           string
	apiserver, apiKey   string
	saKey, saPub        string
	clients             map[string]*keyPair // kubeconfig file name → credential
	kcm, sched, kwokCfg string              // kubeconfig paths

	// The real node: the kubelet's serving certificate, and the client
	// certificate the API server presents to it (logs, exec).
	kubeletCert, kubeletKey             string
	kubeletClientCert, kubeletClientKey string
}

// writePKI makes a CA, the API server's serving certificate, the
// service-account signing key, and one client credential per identity.
func (e *Env) writePKI() error {
	dir := filepath.Join(e.Dir, "pki")
	ca, err := newCA()
	if err != nil {
		return err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}
	if e.has(RealNode) {
		ips = append(ips, net.ParseIP(bridgeIP))
	}
	srv, err := ca.serving("kube-apiserver",
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, ips)
	if err != nil {
		return err
	}
	f := &pkiFiles{clients: map[string]*keyPair{}}
	if f.ca, f.caKey, err = ca.writeFiles(dir, "ca"); err != nil {
		return err
	}
	if f.apiserver, f.apiKey, err = srv.writeFiles(dir, "apiserver"); err != nil {
		return err
	}
	saKey, saKeyPEM, err := newKey()
	if err != nil {
		return err
	}
	saPubPEM, err := publicKeyPEM(saKey)
	if err != nil {
		return err
	}
	f.saKey, f.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(f.saKey, saKeyPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(f.saPub, saPubPEM, 0o644); err != nil {
		return err
	}
	// The controller-manager and scheduler get the identities the default
	// RBAC policy grants (system:kube-*). kwok stands in for kubelets of
	// any name, which the Node authorizer cannot express, so it is admin.
	admin, err := ca.client("parry-admin", "system:masters")
	if err != nil {
		return err
	}
	kcm, err := ca.client("system:kube-controller-manager")
	if err != nil {
		return err
	}
	sched, err := ca.client("system:kube-scheduler")
	if err != nil {
		return err
	}
	f.clients["admin"], f.clients["controller-manager"], f.clients["scheduler"], f.clients["kwok"] = admin, kcm, sched, admin
	if e.has(RealNode) {
		if err := e.writeNodePKI(ca, f, dir); err != nil {
			return err
		}
	}
	f.kcm = filepath.Join(dir, "controller-manager.kubeconfig")
	f.sched = filepath.Join(dir, "scheduler.kubeconfig")
	f.kwokCfg = filepath.Join(dir, "kwok.kubeconfig")
	e.pki = f
	e.CACertPEM, e.adminCert, e.adminKey = ca.certPEM, admin.certPEM, admin.keyPEM
	e.ServiceAccountIssuer, e.ServiceAccountPublicKeyPEM = saIssuer, string(saPubPEM)
	return nil
}

// writeNodePKI adds the real node's identities: the kubelet as
// system:node:<name> (the Node authorizer and NodeRestriction apply), its
// serving certificate for the node's address, kube-proxy as
// system:kube-proxy, and the API server's client certificate for kubelets.
func (e *Env) writeNodePKI(ca *keyPair, f *pkiFiles, dir string) error {
	node, err := ca.client("system:node:"+realNode, "system:nodes")
	if err != nil {
		return err
	}
	proxy, err := ca.client("system:kube-proxy")
	if err != nil {
		return err
	}
	f.clients["kubelet"], f.clients["kube-proxy"] = node, proxy
	serving, err := ca.serving(realNode, []string{realNode}, []net.IP{net.ParseIP(bridgeIP)})
	if err != nil {
		return err
	}
	if f.kubeletCert, f.kubeletKey, err = serving.writeFiles(dir, "kubelet-serving"); err != nil {
		return err
	}
	client, err := ca.client("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	f.kubeletClientCert, f.kubeletClientKey, err = client.writeFiles(dir, "apiserver-kubelet-client")
	return err
}

// writeKubeconfigs writes every kubeconfig once the API server's URL is known.
func (e *Env) writeKubeconfigs() error {
	e.Kubeconfig = filepath.Join(e.Dir, "kubeconfig")
	for name, kp := range e.pki.clients {
		path := filepath.Join(e.Dir, "pki", name+".kubeconfig")
		if name == "admin" {
			path = e.Kubeconfig
		}
		if err := os.WriteFile(path, kubeconfig(e.APIServerURL, e.CACertPEM, kp, kp.cert.Subject.CommonName), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func kubeconfig(server string, ca []byte, kp *keyPair, user string) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: parry-devenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: parry-devenv
  context:
    cluster: parry-devenv
    user: %s
current-context: parry-devenv
`, server, b64(ca), user, b64(kp.certPEM), b64(kp.keyPEM), user)
}

// retryPorts starts a server on n fresh ports; when it loses a port to
// another program between our probe and its bind, it tries again on new
// ones.
func (e *Env) retryPorts(ctx context.Context, n int, launch func(ports []int) (*proc, error)) error {
	const attempts = 3
	var err error
	for i := 1; i <= attempts; i++ {
		var ports []int
		if ports, err = e.opts.reservePorts(n); err != nil {
			return err
		}
		var p *proc
		began := time.Now()
		p, err = launch(ports)
		if err == nil && p != nil {
			e.logf("devenv: %s ready in %s (pid %d)", p.name, time.Since(began).Round(10*time.Millisecond), p.pid())
		}
		if err == nil || p == nil || !portClash(p.logPath) || ctx.Err() != nil {
			return err
		}
		e.logf("devenv: %s lost port(s) %v to another program; retrying on new ports (%d/%d)", p.name, ports, i, attempts)
		e.discard(p)
		_ = os.Rename(p.logPath, fmt.Sprintf("%s.clash-%d", p.logPath, i))
	}
	return err
}

// discard stops a server that failed to start and forgets it.
func (e *Env) discard(p *proc) {
	p.stop(2 * time.Second)
	e.mu.Lock()
	for i, q := range e.procs {
		if q == p {
			e.procs = append(e.procs[:i], e.procs[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	_ = e.writeState()
}

func (e *Env) startEtcd(ctx context.Context) error {
	return e.retryPorts(ctx, 2, func(ports []int) (*proc, error) {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		data := filepath.Join(e.Dir, "etcd")
		_ = os.RemoveAll(data)
		p, err := e.startProc(procSpec{name: "etcd", stopSig: throwAway, path: e.bins.etcd, args: []string{
			"--name=devenv",
			"--data-dir=" + data,
			"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=devenv=" + peer,
			// Loopback only and thrown away afterwards: durability is
			// not worth the fsync latency on a shared disk.
			"--unsafe-no-fsync",
			"--log-level=warn",
		}})
		if err != nil {
			return nil, err
		}
		e.etcdURL = client
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(http.DefaultClient, client+"/health", `"health":"true"`))
	})
}

func (e *Env) startAPIServer(ctx context.Context) error {
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		return e.launchAPIServer(ctx, ports[0])
	})
}

// launchAPIServer starts the API server on port and waits until it is
// ready.
func (e *Env) launchAPIServer(ctx context.Context, port int) (*proc, error) {
	f := e.pki
	host := "127.0.0.1"
	if e.has(RealNode) {
		// Pods reach the API server through the kubernetes Service,
		// whose endpoint is this address on the node's bridge.
		host = bridgeIP
	}
	e.APIServerURL = fmt.Sprintf("https://%s:%d", host, port)
	args := []string{
		"--etcd-servers=" + e.etcdURL,
		"--bind-address=" + host,
		"--advertise-address=" + host,
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + f.apiserver, "--tls-private-key-file=" + f.apiKey,
		"--client-ca-file=" + f.ca,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + saIssuer,
		"--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + f.saKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		"--enable-admission-plugins=NodeRestriction",
		// This plugin taints every new node not-ready until the
		// controller-manager's next node-lifecycle pass (about 5 s
		// here); kwok's node is Ready within milliseconds, so the
		// taint would only delay start-up.
		"--disable-admission-plugins=TaintNodesByCondition",
		"--cert-dir=" + filepath.Join(e.Dir, "pki", "apiserver-certs"),
		"--profiling=false",
	}
	if e.has(RealNode) {
		args = append(args,
			"--kubelet-client-certificate="+f.kubeletClientCert, "--kubelet-client-key="+f.kubeletClientKey,
			"--kubelet-certificate-authority="+f.ca,
			// Not the node's name: the host's resolver does not know it.
			"--kubelet-preferred-address-types=InternalIP,Hostname")
	} else {
		// Endpoints may not hold loopback addresses, and this API
		// server is only reachable on loopback: skip the endpoint
		// of the "kubernetes" service.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	p, err := e.startProc(procSpec{name: "kube-apiserver", stopSig: throwAway, path: e.bins.apiserver, args: args})
	if err != nil {
		return nil, err
	}
	return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(e.adminHTTP(), e.APIServerURL+"/readyz", "ok"))
}

// RestartAPIServer stops the API server, leaves it down for down, and
// starts it again on the same address, returning once it is ready: for
// tests of what a client does while the API server is away (connections
// refused, not hanging). etcd keeps the cluster's state meanwhile.
func (e *Env) RestartAPIServer(ctx context.Context, down time.Duration) error {
	old := e.procNamed("kube-apiserver")
	if old == nil {
		return errors.New("devenv: no API server runs in this environment")
	}
	u, err := url.Parse(e.APIServerURL)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return fmt.Errorf("devenv: API server URL %s: %w", e.APIServerURL, err)
	}
	old.stop(2 * time.Second)
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	began := time.Now()
	p, err := e.launchAPIServer(ctx, port)
	e.replaceProc(old, p)
	if err != nil {
		return fmt.Errorf("devenv: restarting the API server on port %d: %w", port, err)
	}
	e.logf("devenv: kube-apiserver back after %s down, ready in %s (pid %d)", down, time.Since(began).Round(10*time.Millisecond), p.pid())
	return nil
}

func (e *Env) startControllerManager(ctx context.Context) error {
	f := e.pki
	kc := filepath.Join(e.Dir, "pki", "controller-manager.kubeconfig")
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		p, err := e.startProc(procSpec{name: "kube-controller-manager", stopSig: throwAway, path: e.bins.controllerManager, args: []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--cert-dir=" + filepath.Join(e.Dir, "pki", "controller-manager-certs"),
			// One controller-manager, no replicas to elect among;
			// skipping election saves seconds at start-up.
			"--leader-elect=false",
			// Each controller acts as its own service account, as in a
			// production cluster, so RBAC is exercised per controller.
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + f.saKey,
			"--root-ca-file=" + f.ca,
			"--cluster-signing-cert-file=" + f.ca,
			"--cluster-signing-key-file=" + f.caKey,
			// Check node health every second (default 5s) so the new
			// kwok node loses its not-ready taint, and pods can be
			// scheduled, a few seconds sooner.
			"--node-monitor-period=1s",
			"--profiling=false",
		}})
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(insecureHTTP(), fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0]), "ok"))
	})
}

func (e *Env) startScheduler(ctx context.Context) error {
	kc := filepath.Join(e.Dir, "pki", "scheduler.kubeconfig")
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		p, err := e.startProc(procSpec{name: "kube-scheduler", stopSig: throwAway, path: e.bins.scheduler, args: []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--leader-elect=false",
			"--profiling=false",
		}})
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(insecureHTTP(), fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0]), "ok"))
	})
}

// startKwok registers one fake node and starts kwok, which plays its kubelet:
// it keeps the node Ready and moves pods bound to it to Running.
func (e *Env) startKwok(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, fakeNode(), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("devenv: create node %s: %w", nodeName, err)
	}
	e.NodeName = nodeName
	kc := filepath.Join(e.Dir, "pki", "kwok.kubeconfig")
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		p, err := e.startProc(procSpec{name: "kwok", stopSig: throwAway, path: e.bins.kwok, args: []string{
			"--kubeconfig=" + kc,
			"--config=" + e.bins.kwokStages,
			"--manage-all-nodes=false",
			"--manage-nodes-with-annotation-selector=" + kwokAnnotation + "=fake",
			"--node-ip=127.0.0.1",
			"--node-lease-duration-seconds=40",
			"--server-address=127.0.0.1:" + strconv.Itoa(ports[0]),
		}})
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, func(ctx context.Context) error {
			n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !nodeSchedulable(n) {
				return fmt.Errorf("node %s not Ready and untainted yet", nodeName)
			}
			return nil
		})
	})
}

func fakeNode() *corev1.Node {
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        nodeName,
			Annotations: map[string]string{kwokAnnotation: "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
		},
		Status: corev1.NodeStatus{Capacity: res, Allocatable: res},
	}
}

// nodeSchedulable: Ready, and the controller-manager has lifted the
// not-ready taint it puts on new nodes (until then pods stay Pending).
func nodeSchedulable(n *corev1.Node) bool {
	ready := false
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return false
		}
	}
	return ready
}

// adminHTTP is an HTTP client that trusts the devenv CA and presents the
// admin certificate.
func (e *Env) adminHTTP() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CACertPEM)
	cert, err := tls.X509KeyPair(e.adminCert, e.adminKey)
	if err != nil {
		panic(err) // generated by writePKI a moment ago
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
}

// insecureHTTP talks to the controller-manager's and scheduler's health
// endpoints, which serve a self-signed certificate on loopback.
func insecureHTTP() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// httpOK is a readiness check: GET url answers 200 with want in the body.
func httpOK(c *http.Client, url, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
		}
		if !strings.Contains(strings.ToLower(string(body)), want) {
			return errors.New("GET " + url + ": unexpected body " + string(body))
		}
		return nil
	}
}

// WaitAllowed waits until the API server lets c (a client impersonating
// some user) do what attrs describe: its RBAC authorizer reads bindings from
// an informer cache, so a binding created a moment ago may not apply yet.
// Call it with a verb the binding grants before testing what it denies.
func WaitAllowed(t testing.TB, c kubernetes.Interface, attrs authorizationv1.ResourceAttributes) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(),
			&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}, metav1.CreateOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case r.Status.Allowed:
			return
		default:
			last = "denied: " + r.Status.Reason
		}
	}
	t.Fatalf("%s %s in %q not allowed within 10s (%s): the binding did not take effect", attrs.Verb, attrs.Resource, attrs.Namespace, last)
}

// BoundServiceAccount creates the ServiceAccount ns/name, a ClusterRole of
// exactly rules bound to it, and returns a config that impersonates it,
// once the binding applies (granted names a request rules allow; see
// WaitAllowed). Tests run a step with it to check the rules its Spec
// declares.
func (e *Env) BoundServiceAccount(t testing.TB, ns, name string, rules []rbacv1.PolicyRule, granted authorizationv1.ResourceAttributes) *rest.Config {
	t.Helper()
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(e.RESTConfig())
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + name}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	WaitAllowed(t, c, granted)
	return cfg
}
