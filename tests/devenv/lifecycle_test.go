package devenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests exercise the harness itself: faults and clean-up. Those that
// start servers use Start directly (not the shared environment) because they
// need environments of their own to break.

// envDir returns a path for an environment directory under t.TempDir(),
// whose directories the postgres user may search (t.TempDir makes them 0700).
func envDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(d, "env")
}

// requireBuilt skips (or fails under CI) when the servers are not built.
func requireBuilt(t *testing.T, c Component) {
	t.Helper()
	if err := Check(Options{Components: c}); err != nil {
		var missing *MissingError
		if errors.As(err, &missing) && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
}

func TestMissingBinariesNameTheFix(t *testing.T) {
	empty := t.TempDir()
	_, err := Start(t.Context(), Options{BinDir: empty, Components: Kubernetes})
	var missing *MissingError
	if !errors.As(err, &missing) {
		t.Fatalf("want *MissingError, got %v", err)
	}
	for _, want := range []string{filepath.Join(empty, "kube-apiserver"), filepath.Join(empty, "etcd"), "make tools"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestMissingPostgresNamesTheDebianPackage(t *testing.T) {
	_, err := Start(t.Context(), Options{PostgresBinDir: t.TempDir(), Components: Postgres})
	var missing *MissingError
	if !errors.As(err, &missing) || !strings.Contains(err.Error(), "apt-get install -y postgresql") {
		t.Fatalf("want a MissingError naming apt-get install -y postgresql, got %v", err)
	}
}

// A server that exits at once: the error carries its log tail, and nothing
// is left running or on disk.
func TestServerThatFailsShowsItsLog(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\necho 'etcd: simulated corruption in member dir' >&2\nexit 3\n"
	if err := os.WriteFile(filepath.Join(bin, "etcd"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "env")
	_, err := Start(t.Context(), Options{BinDir: bin, Dir: dir, Components: Etcd, ReadyTimeout: 10 * time.Second})
	if err == nil {
		t.Fatal("Start succeeded with a failing etcd")
	}
	for _, want := range []string{"etcd did not start", "exit status 3", "simulated corruption"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if pid := OwnerAlive(dir); pid != 0 {
		t.Errorf("directory still claimed by pid %d after a failed start", pid)
	}
	if st, err := readState(dir); err != nil || len(st.Procs) != 0 {
		t.Errorf("state after a failed start: %+v, %v; want no servers", st, err)
	}
}

// A port taken between our probe and the server's bind: the server fails
// with "address already in use" and is retried on fresh ports.
func TestPortClashIsRetried(t *testing.T) {
	requireBuilt(t, Vault)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	calls := 0
	reserve := func(n int) ([]int, error) {
		calls++
		ports, err := freePorts(n)
		if calls == 1 && err == nil {
			ports[0] = busy.Addr().(*net.TCPAddr).Port
		}
		return ports, err
	}
	env, err := Start(t.Context(), Options{Components: Vault, reservePorts: reserve})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	if calls < 2 {
		t.Fatalf("ports were reserved %d time(s); want a retry", calls)
	}
	if strings.HasSuffix(env.VaultAddr, fmt.Sprint(busy.Addr().(*net.TCPAddr).Port)) {
		t.Fatalf("vault claims the busy port: %s", env.VaultAddr)
	}
}

// A directory left by a crashed run: its recorded servers are ended and the
// directory is taken over.
func TestStaleDirIsCleanedAndReused(t *testing.T) {
	requireBuilt(t, Etcd)
	dir := filepath.Join(t.TempDir(), "env")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A "server" of the crashed run, in its own process group.
	orphan := exec.Command("sleep", "300")
	orphan.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	defer orphan.Process.Kill()
	reaped := make(chan struct{})
	go func() { orphan.Wait(); close(reaped) }()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", orphan.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	st := state{Owner: 999999999, Procs: []procState{{Name: "etcd", PID: orphan.Process.Pid, Exe: exe}}}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o644); err != nil {
		t.Fatal(err)
	}

	env, err := Start(t.Context(), Options{Dir: dir, Components: Etcd})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	select {
	case <-reaped:
	case <-time.After(5 * time.Second):
		t.Fatal("the crashed run's server is still running")
	}
	if OwnerAlive(dir) != os.Getpid() {
		t.Fatal("the directory was not taken over")
	}
	// And a second environment may not take a live one's directory.
	_, err = Start(t.Context(), Options{Dir: dir, Components: Etcd})
	var inUse *InUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("want *InUseError for a live directory, got %v", err)
	}
}

func TestUnreachableDirForPostgresIsExplained(t *testing.T) {
	requireBuilt(t, Postgres)
	if os.Geteuid() != 0 {
		t.Skip("needs root: PostgreSQL runs as another user only when started by root")
	}
	dir := filepath.Join(t.TempDir(), "env") // t.TempDir is 0700
	_, err := Start(t.Context(), Options{Dir: dir, Components: Postgres})
	if err == nil || !strings.Contains(err.Error(), "cannot reach") || !strings.Contains(err.Error(), "chmod o+x") {
		t.Fatalf("want an error explaining the postgres user cannot reach %s, got %v", dir, err)
	}
}

func TestForeignDirIsRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	requireBuilt(t, Etcd)
	_, err := Start(t.Context(), Options{Dir: dir, Components: Etcd})
	if err == nil || !strings.Contains(err.Error(), "not a devenv directory") {
		t.Fatalf("Start on a foreign directory: %v; want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious.txt")); err != nil {
		t.Fatalf("a foreign directory was touched: %v", err)
	}
}

// SIGKILLing the process that owns an environment leaves no server behind,
// and the next run starts cleanly on fresh ports.
func TestKilledOwnerLeavesNoServer(t *testing.T) {
	requireBuilt(t, All)
	dir := envDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOwner$", "-test.v")
	cmd.Env = append(os.Environ(), "PARRY_DEVENV_HELPER_DIR="+dir)
	out, err := os.Create(filepath.Join(t.TempDir(), "helper.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// The env file is written last: its presence means every server is up.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(dir, "env")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper did not start the environment; log %s:\n%s", out.Name(), logTail(out.Name(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := readState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Procs) < 7 {
		t.Fatalf("helper recorded %d servers, want 7: %+v", len(st.Procs), st.Procs)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // "signal: killed", as intended
	deadline = time.Now().Add(10 * time.Second)
	for _, p := range st.Procs {
		for processAlive(p.PID, p.Exe) || groupAlive(p.PID) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (process group %d) survived its owner's SIGKILL", p.Name, p.PID)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// The follow-up run takes over the same directory on fresh ports.
	env, err := Start(t.Context(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	// Ports are picked afresh (the killed run's may legitimately come up
	// again); what matters is that only the new servers run.
	old := map[int]bool{}
	for _, p := range st.Procs {
		old[p.PID] = true
	}
	for _, pid := range env.PIDs() {
		if old[pid] {
			t.Fatalf("pid %d of the killed run is part of the new environment", pid)
		}
	}
	if len(env.PIDs()) != len(st.Procs) {
		t.Fatalf("follow-up run has %d servers, want %d", len(env.PIDs()), len(st.Procs))
	}
}

// TestHelperOwner is the process TestKilledOwnerLeavesNoServer kills.
func TestHelperOwner(t *testing.T) {
	dir := os.Getenv("PARRY_DEVENV_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestKilledOwnerLeavesNoServer")
	}
	env, err := Start(context.Background(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_ = env
	time.Sleep(10 * time.Minute) // until SIGKILLed
}

func TestStopEndsEverything(t *testing.T) {
	requireBuilt(t, Etcd|Postgres)
	env, err := Start(t.Context(), Options{Components: Etcd | Postgres})
	if err != nil {
		t.Fatal(err)
	}
	// The control: the servers ran before Stop, so their absence after it
	// is Stop's doing.
	pids := env.PIDs()
	if len(pids) != 2 {
		t.Fatalf("%d servers started, want 2 (etcd, postgres): %v", len(pids), pids)
	}
	for _, pid := range pids {
		if !processAlive(pid, "") {
			t.Fatalf("server %d is not running before Stop", pid)
		}
	}
	if _, err := os.Stat(env.Dir); err != nil {
		t.Fatalf("the environment's directory before Stop: %v", err)
	}
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if processAlive(pid, "") || groupAlive(pid) {
			t.Errorf("process group %d still running after Stop", pid)
		}
	}
	if _, err := os.Stat(env.Dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s not removed: %v", env.Dir, err)
	}
}
