package devenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// MissingError reports prerequisites that are not installed: servers not yet
// built, or Debian packages not installed. Fix is the command that provides
// them.
type MissingError struct {
	Missing []string
	Fix     string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("devenv: missing %s; provide with: %s", strings.Join(e.Missing, ", "), e.Fix)
}

// S3BuildTime is how long SeaweedFS's cold build takes (tools/README.md).
const S3BuildTime = "10 to 15 minutes"

// binaries are the absolute paths of the servers to run.
type binaries struct {
	etcd, apiserver, controllerManager, scheduler, kwok, kwokStages, vault, weed string
	initdb, postgres, pgIsReady                                                  string
	pgCred                                                                       *syscall.Credential

	// The real node: built by `make cluster-tools`, or from Debian.
	kubelet, kubeProxy, kubectl, crane, coredns, pause string
	containerd, unshare                                string
	knative                                            map[string]string // command base name → binary
	knativeConfig                                      string            // the release YAML (a tar)
}

// RepoRoot walks up from the working directory to the directory whose
// go.mod declares module parry.dev/parry.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isParryModule(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("devenv: no parry.dev/parry go.mod above the working directory; set PARRY_TOOLS_BIN")
		}
		dir = parent
	}
}

func isParryModule(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == "parry.dev/parry"
		}
	}
	return false
}

// ToolsBinDir is where the servers built by `make tools` are looked up.
func ToolsBinDir(opts Options) (string, error) {
	if opts.BinDir != "" {
		return filepath.Abs(opts.BinDir)
	}
	if d := os.Getenv("PARRY_TOOLS_BIN"); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

func findBinaries(opts Options) (binaries, error) {
	var b binaries
	c := opts.Components
	if c&RealNode != 0 && c&Kwok != 0 {
		return b, fmt.Errorf("devenv: Kwok and RealNode exclude each other: choose the fake node (Kubernetes) or the real one (Cluster)")
	}
	dir, err := ToolsBinDir(opts)
	if err != nil {
		return b, err
	}
	var missing []string
	tool := func(want bool, dst *string, name string) {
		if !want {
			return
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			missing = append(missing, p)
			return
		}
		*dst = p
	}
	tool(c&Etcd != 0, &b.etcd, "etcd")
	tool(c&APIServer != 0, &b.apiserver, "kube-apiserver")
	tool(c&ControllerManager != 0, &b.controllerManager, "kube-controller-manager")
	tool(c&Scheduler != 0, &b.scheduler, "kube-scheduler")
	tool(c&Kwok != 0, &b.kwok, "kwok")
	tool(c&Kwok != 0, &b.kwokStages, "kwok-stages.yaml")
	tool(c&Vault != 0, &b.vault, "vault")
	if len(missing) > 0 {
		return b, &MissingError{Missing: missing, Fix: "make tools (builds them from pinned sources; about 30 minutes cold on two cores, seconds when cached)"}
	}
	tool(c&S3 != 0, &b.weed, "weed")
	if len(missing) > 0 {
		return b, &MissingError{Missing: missing, Fix: "make tools-s3 (builds SeaweedFS from a pinned source; " + S3BuildTime + " cold on two cores, seconds when cached; the S3 tests are opt-in, required only with PARRY_S3=required)"}
	}
	if c&RealNode != 0 {
		tool(true, &b.kubelet, "kubelet")
		tool(true, &b.kubeProxy, "kube-proxy")
		tool(true, &b.kubectl, "kubectl")
		tool(true, &b.pause, "pause")
		tool(true, &b.crane, "crane")
		tool(true, &b.coredns, "coredns")
		if c&Knative != 0 {
			b.knative = map[string]string{}
			for _, cmd := range knativeCommands {
				name := filepath.Base(cmd)
				var p string
				tool(true, &p, "knative-"+name)
				b.knative[name] = p
			}
			tool(true, &b.knativeConfig, "knative-eventing-config.tar")
		}
		if len(missing) > 0 {
			return b, &MissingError{Missing: missing, Fix: "make cluster-tools (kubelet, kube-proxy, crane, CoreDNS, Knative Eventing from pinned sources; about 15 minutes cold on two cores, seconds when cached)"}
		}
		if err := findNodePackages(opts, &b); err != nil {
			return b, err
		}
	}
	if c&Postgres != 0 {
		if err := findPostgres(opts, &b); err != nil {
			return b, err
		}
	}
	return b, nil
}

// findNodePackages locates the real node's Debian parts: containerd and
// runc, the CNI plugins, nftables and iproute2, util-linux's unshare, and
// busybox for the test image. The node also needs root.
func findNodePackages(opts Options, b *binaries) error {
	var missing []string
	need := func(path string) {
		if _, err := os.Stat(path); err != nil {
			missing = append(missing, path)
		}
	}
	for _, p := range []string{"/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc",
		"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback",
		"/usr/sbin/nft", "/usr/sbin/conntrack", "/usr/bin/unshare", "/bin/busybox", "/etc/ssl/certs/ca-certificates.crt"} {
		need(p)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "ip (iproute2)")
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing, Fix: "bash .ci/install-deps.sh (apt-get install -y containerd runc containernetworking-plugins iptables nftables conntrack busybox-static)"}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("devenv: the real node needs root (bridge, mounts, cgroups, containerd); run as root or use the kwok node (devenv.Kubernetes)")
	}
	b.containerd, b.unshare = "/usr/bin/containerd", "/usr/bin/unshare"
	if opts.Containerd != "" {
		b.containerd = opts.Containerd
	}
	return nil
}

// findPostgres locates Debian's PostgreSQL server binaries and the postgres
// user they must run as (initdb and postgres refuse to run as root).
func findPostgres(opts Options, b *binaries) error {
	fix := "apt-get install -y postgresql (or: bash .ci/install-deps.sh)"
	dir := opts.PostgresBinDir
	if dir == "" {
		dir = os.Getenv("PARRY_PG_BIN")
	}
	if dir == "" {
		// Debian installs each major version side by side; take the newest.
		cands, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
		sort.Slice(cands, func(i, j int) bool { return pgMajor(cands[i]) > pgMajor(cands[j]) })
		if len(cands) == 0 {
			return &MissingError{Missing: []string{"PostgreSQL server (/usr/lib/postgresql/*/bin/postgres)"}, Fix: fix}
		}
		dir = filepath.Dir(cands[0])
	}
	var missing []string
	for _, x := range []struct {
		dst  *string
		name string
	}{{&b.initdb, "initdb"}, {&b.postgres, "postgres"}, {&b.pgIsReady, "pg_isready"}} {
		p := filepath.Join(dir, x.name)
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
			continue
		}
		*x.dst = p
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		missing = append(missing, `user "postgres"`)
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing, Fix: fix}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	b.pgCred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if os.Geteuid() != 0 && os.Geteuid() != uid {
		return fmt.Errorf("devenv: PostgreSQL must run as the postgres user, which needs root (or the postgres user itself) to start; run the tests as root, or leave out devenv.Postgres")
	}
	if os.Geteuid() == uid {
		b.pgCred = nil // already postgres
	}
	return nil
}

func pgMajor(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

// Check reports, as a *MissingError naming the command that fixes it, what
// Start would miss for opts: servers not built, PostgreSQL not installed.
func Check(opts Options) error {
	if opts.Components == 0 {
		opts.Components = All
	}
	opts.Components = opts.Components.withDeps()
	_, err := findBinaries(opts)
	return err
}
