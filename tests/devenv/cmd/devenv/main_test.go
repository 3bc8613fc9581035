package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"parry.dev/parry/tests/devenv"
)

// The command end to end, as `make devenv` and `make devenv-down` use it:
// up starts a daemon and prints the paths; a daemon killed by SIGKILL takes
// its servers along and the next up cleans its directory; down stops it.
func TestUpDown(t *testing.T) {
	if err := devenv.Check(devenv.Options{}); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	bin := filepath.Join(t.TempDir(), "devenv")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// t.TempDir is 0700; PostgreSQL (run as postgres) must reach inside.
	dir := t.TempDir()
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(dir, "env")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "-dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("devenv %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	defer exec.Command(bin, "down", "-dir", dir).Run()

	out := run("up")
	for _, want := range []string{filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "env")} {
		if !strings.Contains(out, want) {
			t.Fatalf("up does not print %s:\n%s", want, out)
		}
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"KUBECONFIG=", "VAULT_ADDR=", "VAULT_TOKEN=", "PARRY_PG_DSN="} {
		if !strings.Contains(string(env), "\n"+k) {
			t.Errorf("env file lacks %s:\n%s", k, env)
		}
	}
	if out := run("up"); !strings.Contains(out, "already running") {
		t.Errorf("second up: %s", out)
	}
	if out := run("status"); !strings.Contains(out, "running (pid") {
		t.Errorf("status: %s", out)
	}

	// Crash the daemon: its servers must die with it, and up must recover.
	daemon, pids := stateOf(t, dir)
	if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pids)
	out = run("up")
	if !strings.Contains(out, "kubeconfig:") {
		t.Fatalf("up after a crash: %s", out)
	}

	_, pids = stateOf(t, dir)
	if out := run("down"); !strings.Contains(out, "stopped") {
		t.Errorf("down: %s", out)
	}
	waitGone(t, pids)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("down left %s behind (%v)", dir, err)
	}
}

func stateOf(t *testing.T, dir string) (owner int, pids []int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Owner int `json:"owner"`
		Procs []struct {
			PID int `json:"pid"`
		} `json:"procs"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Procs {
		pids = append(pids, p.PID)
	}
	if st.Owner == 0 || len(pids) != 7 {
		t.Fatalf("state: owner %d, %d servers; want a live owner and 7 servers", st.Owner, len(pids))
	}
	return st.Owner, pids
}

// waitGone fails unless every pid has exited (zombies count as exited).
func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still running", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}
