package devenv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The real node changes the host, unlike every other component: a bridge,
// nftables tables, ip_forward, mounts, cgroups and a few fixed paths the
// kubelet and containerd insist on. This file records each change in a
// machine-wide host state before making it, and undoes all of them, both
// on Stop and when a later run (or `devenv down`) finds the state of a run
// whose owner died. Only one real node runs per machine: the fixed paths
// and the bridge name allow no second.

const (
	// hostStateDir is on tmpfs: a reboot clears it together with
	// everything it describes.
	hostStateDir = "/run/parry-devenv"

	bridgeName = "parrydev0"
	// A /24 few setups use (flannel's 10.244 and podman's 10.88 are
	// common); Start refuses if the host already routes it.
	podCIDR    = "10.217.0.0/24"
	bridgeIP   = "10.217.0.1"
	clusterDNS = "10.96.0.10"
	realNode   = "parry-node-0"
	// nftTable confines pods to the bridge (see netUp).
	nftTable = "parry_devenv"
)

// Paths outside the environment's directory that the kubelet, containerd
// and the CNI plugins create whatever they are configured with.
var hostPaths = []string{"/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/run/containerd", "/run/netns"}

// hostState is what a real-node run changed on the machine.
type hostState struct {
	Owner      int       `json:"owner"`
	OwnerExe   string    `json:"ownerExe"`
	Dir        string    `json:"dir"`
	Started    time.Time `json:"started"`
	IPForward  string    `json:"ipForward"`  // to restore
	Created    []string  `json:"created"`    // hostPaths that did not exist before
	NftBefore  []string  `json:"nftBefore"`  // tables that existed before ("ip filter", ...)
	Containerd string    `json:"containerd"` // our containerd's socket: its shims name it
}

func hostStatePath() string { return filepath.Join(hostStateDir, "realnode.json") }

// hostLock takes the machine-wide real-node lock, held until the owner
// exits (the kernel drops a flock with its last descriptor). A run whose
// owner died left the lock free and its state behind: that state is
// cleaned here first.
func (e *Env) hostLock() error {
	if err := os.MkdirAll(hostStateDir, 0o755); err != nil {
		return fmt.Errorf("devenv: real node: %w (the real node needs root)", err)
	}
	f, err := os.OpenFile(filepath.Join(hostStateDir, "realnode.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("devenv: real node: %w (the real node needs root)", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		owner := "another process"
		if st, err := readHostState(); err == nil {
			owner = fmt.Sprintf("pid %d, directory %s", st.Owner, st.Dir)
		}
		return fmt.Errorf("devenv: a real-node cluster already runs on this machine (%s); one node per machine: stop it first (make cluster-down, or devenv -dir DIR down)", owner)
	}
	e.hostLockFile = f
	if st, err := readHostState(); err == nil {
		e.logf("devenv: cleaning the host after a real-node run that died (pid %d, %s)", st.Owner, st.Dir)
		if err := cleanHost(st, e.logf); err != nil {
			return err
		}
	}
	return nil
}

func readHostState() (*hostState, error) {
	b, err := os.ReadFile(hostStatePath())
	if err != nil {
		return nil, err
	}
	var st hostState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("devenv: %s: %w", hostStatePath(), err)
	}
	return &st, nil
}

func writeHostState(st *hostState) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := hostStatePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, hostStatePath())
}

// recordHost notes what the host looks like before the real node changes
// it, so teardown restores exactly that.
func (e *Env) recordHost() error {
	if err := checkSubnetsFree(); err != nil {
		return err
	}
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return err
	}
	st := &hostState{Owner: os.Getpid(), OwnerExe: selfExe(), Dir: e.Dir, Started: time.Now(),
		IPForward: strings.TrimSpace(string(fwd)), Containerd: e.containerdSock()}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			st.Created = append(st.Created, p)
		}
	}
	st.NftBefore, err = nftTables()
	if err != nil {
		return err
	}
	e.host = st
	return writeHostState(st)
}

// checkSubnetsFree refuses to add the bridge where the host already has
// addresses in the pod or service range: routing them to the bridge would
// cut off whatever uses them.
func checkSubnetsFree() error {
	_, pods, _ := net.ParseCIDR(podCIDR)
	_, svcs, _ := net.ParseCIDR(serviceCIDR)
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, ifc := range ifs {
		if ifc.Name == bridgeName {
			return fmt.Errorf("devenv: the bridge %s already exists, but no real-node run owns it; remove it (ip link del %s) if nothing else uses it", bridgeName, bridgeName)
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if pods.Contains(ipn.IP) || ipn.Contains(pods.IP) || svcs.Contains(ipn.IP) || ipn.Contains(svcs.IP) {
				return fmt.Errorf("devenv: %s on %s overlaps the real node's pod range %s or service range %s; the real node cannot run on this machine without changing those constants", ipn, ifc.Name, podCIDR, serviceCIDR)
			}
		}
	}
	return nil
}

func nftTables() ([]string, error) {
	out, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("devenv: nft list tables: %v: %s (install nftables: bash .ci/install-deps.sh)", err, out)
	}
	var tables []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "table" {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables, nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("devenv: %s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// netUp creates the bridge the pods attach to, with the node's address, and
// a table that drops anything forwarded between the bridge and any other
// interface: pods reach each other, Services and this host, never a network
// beyond it (the CNI bridge plugin turns on ip_forward for the whole host).
func netUp() error {
	steps := [][]string{
		{"ip", "link", "add", bridgeName, "type", "bridge"},
		{"ip", "addr", "add", bridgeIP + "/24", "dev", bridgeName},
		{"ip", "link", "set", bridgeName, "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	chain forward {
		type filter hook forward priority -10; policy accept;
		iifname "%[2]s" oifname != "%[2]s" drop
		oifname "%[2]s" iifname != "%[2]s" drop
	}
}
`, nftTable, bridgeName)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("devenv: nft: add table inet %s: %v: %s", nftTable, err, out)
	}
	return nil
}

// cleanHost undoes everything a real-node run did to the host. Every step
// runs even if an earlier one failed; the errors are joined.
func cleanHost(st *hostState, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	began := time.Now()
	var errs []error
	// 1. Containers and their shims: they are not our children (the shim
	//    daemonises), so neither process groups nor the parent-death
	//    signal reach them.
	killCgroupTree("kubepods")
	killShims(st.Containerd)
	killCgroupTree("kubepods") // anything a dying shim started meanwhile
	// 2. Mounts: pod volumes and the kubelet's shared root, container
	//    root filesystems, the sandboxes' network namespaces.
	errs = append(errs, unmountUnder(st.Dir))
	errs = append(errs, removeNetns(st.Started))
	// 3. Network.
	if _, err := net.InterfaceByName(bridgeName); err == nil {
		errs = append(errs, run("ip", "link", "del", bridgeName))
	}
	errs = append(errs, cleanNft(st.NftBefore))
	if st.IPForward != "" {
		errs = append(errs, os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(st.IPForward), 0o644))
	}
	// 4. Fixed paths and cgroups.
	for _, p := range st.Created {
		if p == "/run/netns" {
			// Others' namespaces may live there by now: only if empty.
			_ = syscall.Rmdir(p)
			continue
		}
		errs = append(errs, os.RemoveAll(p))
	}
	if !contains(st.Created, "/var/log/containers") {
		// Only the kubelet's symlinks into our pod log directory.
		links, _ := filepath.Glob("/var/log/containers/*.log")
		for _, l := range links {
			if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, st.Dir+"/") {
				_ = os.Remove(l)
			}
		}
	}
	errs = append(errs, removeCgroupTree("kubepods"))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("devenv: cleaning the host after the real node: %w", err)
	}
	logf("devenv: host cleaned in %s", time.Since(began).Round(10*time.Millisecond))
	return os.Remove(hostStatePath())
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// cgroupRoots are the mount points of every cgroup hierarchy: on this
// hybrid host one per v1 controller plus the unified one.
func cgroupRoots() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var roots []string
	for _, l := range strings.Split(string(b), "\n") {
		sep := strings.Index(l, " - ")
		if sep < 0 {
			continue
		}
		f, post := strings.Fields(l[:sep]), strings.Fields(l[sep+3:])
		if len(f) >= 5 && len(post) >= 1 && (post[0] == "cgroup" || post[0] == "cgroup2") {
			roots = append(roots, f[4])
		}
	}
	return roots
}

// killCgroupTree SIGKILLs every process in name (a top-level cgroup) in
// every hierarchy, until none is left or 10 s pass.
func killCgroupTree(name string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		found := false
		for _, root := range cgroupRoots() {
			_ = filepath.WalkDir(filepath.Join(root, name), func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, s := range strings.Fields(string(b)) {
					if pid, _ := strconv.Atoi(s); pid > 0 {
						found = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return nil
			})
		}
		if !found {
			return
		}
	}
}

// removeCgroupTree removes name's cgroup directories, deepest first, in
// every hierarchy.
func removeCgroupTree(name string) error {
	var errs []error
	for _, root := range cgroupRoots() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(root, name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for range 50 { // a killed process leaves its cgroup a moment later
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, os.ErrNotExist) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// killShims ends the containerd shims that serve our containerd (their
// command line names its socket).
func killShims(sock string) {
	if sock == "" {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.Contains(filepath.Base(args[0]), "containerd-shim") && contains(args, sock) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount below dir, repeating while mounts
// remain (a bind mount may hide others), and fails if any is left: the
// directory must not be removed with a mount inside.
func unmountUnder(dir string) error {
	if dir == "" {
		return nil
	}
	for range 5 {
		mps := mountsUnder(dir)
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("mounts left under %s: %s", dir, strings.Join(left, ", "))
	}
	return nil
}

// removeNetns removes the sandboxes' network namespaces (containerd 1.6
// keeps them in /run/netns whatever its state directory) made since start.
func removeNetns(since time.Time) error {
	matches, _ := filepath.Glob("/run/netns/cni-*")
	var errs []error
	for _, m := range matches {
		fi, err := os.Lstat(m)
		if err != nil || fi.ModTime().Before(since.Add(-time.Second)) {
			continue
		}
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
		if err := os.Remove(m); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cleanNft deletes our confinement table, kube-proxy's tables, and the
// iptables-nft tables the kubelet made if they did not exist before and
// hold nothing but KUBE-* chains.
func cleanNft(before []string) error {
	now, err := nftTables()
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range now {
		f := strings.Fields(t)
		family, name := f[0], f[1]
		switch {
		case t == "inet "+nftTable || name == "kube-proxy":
		case contains(before, t):
			continue
		case (family == "ip" || family == "ip6") && (name == "filter" || name == "mangle" || name == "nat"):
			if !onlyKubeChains(family, name) {
				continue
			}
		default:
			continue
		}
		errs = append(errs, run("nft", "delete", "table", family, name))
	}
	return errors.Join(errs...)
}

// onlyKubeChains reports whether an iptables-nft table holds only KUBE-*
// chains and the built-in ones iptables creates with them.
func onlyKubeChains(family, name string) bool {
	out, err := exec.Command("nft", "list", "table", family, name).Output()
	if err != nil {
		return false
	}
	builtin := map[string]bool{"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true, "POSTROUTING": true}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "chain" && !builtin[f[1]] && !strings.HasPrefix(f[1], "KUBE-") {
			return false
		}
		// A rule in a built-in chain that jumps anywhere but KUBE-*
		// belongs to someone else.
		if i := indexOf(f, "jump"); i >= 0 && i+1 < len(f) && !strings.HasPrefix(f[i+1], "KUBE-") {
			return false
		}
	}
	return true
}

func indexOf(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}
