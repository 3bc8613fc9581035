package devenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The real node: containerd + runc, the CNI bridge, a kubelet and
// kube-proxy built from the same Kubernetes as the control plane, a local
// OCI registry with images made from local files, and CoreDNS. See
// docs/design.md ("Test environment") for why each setting is what it is;
// the short reasons are next to the settings.

// containerdSock is kept short: a unix socket path has 108 bytes at most.
func (e *Env) containerdSock() string { return filepath.Join(e.Dir, "containerd", "c.sock") }

// prepareRealNode runs before any server: it takes the machine-wide lock,
// records the host and creates the network the API server will bind to.
func (e *Env) prepareRealNode() error {
	if err := e.hostLock(); err != nil {
		return err
	}
	if err := e.startReaper(); err != nil {
		return err
	}
	if err := e.recordHost(); err != nil {
		return err
	}
	return netUp()
}

// startNodeRuntime starts the registry, then pushes the images while
// containerd starts (its configuration names the registry's port); the
// kubelet needs both.
func (e *Env) startNodeRuntime(ctx context.Context) error {
	if err := e.makeNodeDirs(); err != nil {
		return err
	}
	if err := e.startRegistry(ctx); err != nil {
		return err
	}
	if err := e.writeRegistryHosts(); err != nil {
		return err
	}
	return parallel(
		func() error { return e.pushImages(ctx) },
		func() error { return e.startContainerd(ctx) },
	)
}

func (e *Env) startRegistry(ctx context.Context) error {
	blobs := filepath.Join(imageCache(), "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		e.RegistryHost = fmt.Sprintf("127.0.0.1:%d", ports[0])
		p, err := e.startProc(procSpec{name: "registry", stopSig: throwAway, path: e.bins.crane, args: []string{
			// Blobs live in the user's cache, where the layers are
			// built: a second bring-up uploads nothing but manifests,
			// which this registry keeps in memory.
			"registry", "serve", "--address", e.RegistryHost, "--disk", blobs,
		}})
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(http.DefaultClient, "http://"+e.RegistryHost+"/v2/", ""))
	})
}

func (e *Env) startContainerd(ctx context.Context) error {
	dir := filepath.Join(e.Dir, "containerd")
	for _, d := range []string{"root", "state", "runc", "opt"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o711); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(e.containerdConfig()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "cni", "net.d", "10-parry.conflist"), []byte(cniConfig(filepath.Join(e.Dir, "cni", "ipam"))), 0o644); err != nil {
		return err
	}
	began := time.Now()
	p, err := e.startProc(procSpec{name: "containerd", path: e.bins.containerd, stopSig: syscall.SIGTERM, args: []string{
		"--config", filepath.Join(dir, "config.toml"),
	}})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, p, e.opts.ReadyTimeout, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", e.containerdSock())
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		return fmt.Errorf("%w\n(to see it by hand: %s --config %s)", err, e.bins.containerd, filepath.Join(dir, "config.toml"))
	}
	e.logf("devenv: containerd ready in %s (pid %d)", time.Since(began).Round(10*time.Millisecond), p.pid())
	return nil
}

// containerdConfig is the CRI configuration (containerd 1.6, config v2).
func (e *Env) containerdConfig() string {
	dir := filepath.Join(e.Dir, "containerd")
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[5]s/pause:3.10.1"
  # This VM gives no CAP_SYS_RESOURCE: without this every sandbox fails
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %[8]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), e.containerdSock(), filepath.Join(dir, "opt"),
		e.RegistryHost, filepath.Join(dir, "runc"), filepath.Join(e.Dir, "cni", "net.d"), filepath.Join(dir, "certs.d"))
}

// writeRegistryHosts tells containerd to use plain HTTP for the local
// registry (written once its port is known, before the first pull).
func (e *Env) writeRegistryHosts() error {
	d := filepath.Join(e.Dir, "containerd", "certs.d", e.RegistryHost)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "hosts.toml"), fmt.Appendf(nil, `server = "http://%[1]s"

[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
`, e.RegistryHost), 0o644)
}

func cniConfig(ipamDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "parry-devenv",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "hairpinMode": true,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, bridgeName, podCIDR, bridgeIP, ipamDir)
}

// startKubelet runs the kubelet in a mount namespace of its own where the
// three /proc/sys files it insists on rewriting are plain files of ours:
// the host's sysctls stay as they are. Its root directory is a shared
// mount, so the volumes it mounts there reach containerd on the host.
func (e *Env) startKubelet(ctx context.Context) error {
	root := filepath.Join(e.Dir, "kubelet")
	for _, d := range []string{root, filepath.Join(e.Dir, "kubelet-pods-logs"), filepath.Join(e.Dir, "sysctl")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := syscall.Mount(root, root, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("devenv: bind-mount the kubelet's root %s: %w", root, err)
	}
	if err := syscall.Mount("", root, "", syscall.MS_SHARED, ""); err != nil {
		return fmt.Errorf("devenv: make %s a shared mount: %w", root, err)
	}
	sysctls := []struct{ file, value string }{{"vm/overcommit_memory", "1"}, {"kernel/panic", "10"}, {"kernel/panic_on_oops", "1"}}
	var binds []string
	for _, s := range sysctls {
		f := filepath.Join(e.Dir, "sysctl", strings.ReplaceAll(s.file, "/", "."))
		if err := os.WriteFile(f, []byte(s.value+"\n"), 0o644); err != nil {
			return err
		}
		binds = append(binds, f, "/proc/sys/"+s.file)
	}
	resolv := filepath.Join(e.Dir, "kubelet-resolv.conf")
	if err := os.WriteFile(resolv, []byte("# pods with dnsPolicy Default resolve nothing outside the cluster\n"), 0o644); err != nil {
		return err
	}
	ports, err := e.opts.reservePorts(2)
	if err != nil {
		return err
	}
	cfg := filepath.Join(e.Dir, "kubelet-config.yaml")
	if err := os.WriteFile(cfg, []byte(e.kubeletConfig(ports[0], ports[1], resolv)), 0o644); err != nil {
		return err
	}
	// Private /proc first: a bind mount on a shared /proc would
	// propagate to the host.
	script := `set -e
mount --make-rprivate /proc
while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"`
	args := append([]string{"-m", "--propagation", "unchanged", "/bin/sh", "-c", script, "kubelet-ns"}, binds...)
	args = append(args, "--", e.bins.kubelet,
		"--config="+cfg,
		"--kubeconfig="+filepath.Join(e.Dir, "pki", "kubelet.kubeconfig"),
		"--root-dir="+root,
		"--hostname-override="+realNode,
		"--node-ip="+bridgeIP,
		"--v=1",
	)
	began := time.Now()
	p, err := e.startProc(procSpec{name: "kubelet", path: e.bins.unshare, exe: e.bins.kubelet, stopSig: syscall.SIGTERM, args: args})
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		return err
	}
	if err := waitReady(ctx, p, e.opts.ReadyTimeout, func(ctx context.Context) error {
		n, err := cs.CoreV1().Nodes().Get(ctx, realNode, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeSchedulable(n) {
			return fmt.Errorf("node %s not Ready and untainted yet", realNode)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("%w\n(the kubelet needs containerd at %s; containerd's log: %s)", err, e.containerdSock(), filepath.Join(e.Dir, "logs", "containerd.log"))
	}
	e.NodeName = realNode
	e.logf("devenv: kubelet ready in %s, node %s Ready (pid %d)", time.Since(began).Round(10*time.Millisecond), realNode, p.pid())
	return nil
}

func (e *Env) kubeletConfig(port, healthz int, resolv string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host's cgroups are hybrid (v1 controllers, cgroup2 unified): 1.35
# refuses v1 unless told, and only the cgroupfs driver fits (no systemd).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
port: %[3]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[4]d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[5]s}
authorization: {mode: Webhook}
tlsCertFile: %[6]s
tlsPrivateKeyFile: %[7]s
clusterDomain: cluster.local
clusterDNS: [%[8]s]
resolvConf: %[9]s
podLogsDir: %[10]s
# Nothing but Kubernetes' own hint chains; the rest is kube-proxy's.
makeIPTablesUtilChains: false
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
`, e.containerdSock(), bridgeIP, port, healthz, e.pki.ca, e.pki.kubeletCert, e.pki.kubeletKey,
		clusterDNS, resolv, filepath.Join(e.Dir, "kubelet-pods-logs"))
}

// startKubeProxy runs kube-proxy in nftables mode: its footprint is the
// two tables "ip kube-proxy" and "ip6 kube-proxy", removed at teardown.
func (e *Env) startKubeProxy(ctx context.Context) error {
	return e.retryPorts(ctx, 2, func(ports []int) (*proc, error) {
		cfg := filepath.Join(e.Dir, "kube-proxy-config.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %[1]s}
mode: nftables
hostnameOverride: %[2]s
bindAddress: %[3]s
healthzBindAddress: 127.0.0.1:%[4]d
metricsBindAddress: 127.0.0.1:%[5]d
clusterCIDR: %[6]s
nodePortAddresses: [%[3]s/32]
# Zeros leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, filepath.Join(e.Dir, "pki", "kube-proxy.kubeconfig"), realNode, bridgeIP, ports[0], ports[1], podCIDR), 0o644); err != nil {
			return nil, err
		}
		p, err := e.startProc(procSpec{name: "kube-proxy", stopSig: syscall.SIGTERM, path: e.bins.kubeProxy, args: []string{"--config=" + cfg}})
		if err != nil {
			return nil, err
		}
		return p, waitReady(ctx, p, e.opts.ReadyTimeout, httpOK(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[0]), ""))
	})
}

// Kubectl runs the pinned kubectl (bin/kubectl) as admin with stdin (if not
// empty) and returns its combined output; the error carries that output.
func (e *Env) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.bins.kubectl, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("devenv: kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// stopRealNode ends the node's servers and undoes its changes to the host.
// The kubelet goes first so it starts no container while the rest stops.
func (e *Env) stopRealNode() error {
	e.mu.Lock()
	var node []*proc
	for _, p := range e.procs {
		if p.name == "kubelet" || p.name == "kube-proxy" || p.name == "containerd" {
			node = append(node, p)
		}
	}
	e.mu.Unlock()
	for _, p := range node {
		p.stop(5 * time.Second)
	}
	var err error
	if e.host != nil {
		err = cleanHost(e.host, e.logf)
	}
	if e.hostLockFile != nil {
		e.hostLockFile.Close()
	}
	return err
}

// nodeDirs are created in the environment's directory for the real node.
var nodeDirs = []string{"cni/net.d", "cni/ipam"}

func (e *Env) makeNodeDirs() error {
	for _, d := range nodeDirs {
		if err := os.MkdirAll(filepath.Join(e.Dir, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}
