package devenv

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A real node's containers are not the owner's descendants (containerd's
// shims daemonise), and its bridge, mounts and cgroups are no process at
// all: the parent-death signal that ends the servers cannot undo them. So a
// real-node run also starts a reaper: the owner's own executable again,
// which waits for the owner's death signal (SIGTERM, sent by the kernel)
// and then, if the owner died without Stop, ends the leftovers and cleans
// the host. A graceful Stop cleans first; the reaper then finds nothing.

const reaperEnv = "PARRY_DEVENV_REAPER" // "<owner pid>:<dir>"

// reapable is set by MaybeReap: only a program that handles reaperEnv may
// be started again as its own reaper.
var reapable atomic.Bool

// MaybeReap turns this process into a real-node reaper when it was started
// as one, and never returns then. Main calls it; a program that calls Start
// with RealNode (tests/devenv/cmd/devenv) calls it first thing in main.
func MaybeReap() {
	reapable.Store(true)
	v := os.Getenv(reaperEnv)
	if v == "" {
		return
	}
	pidStr, dir, ok := strings.Cut(v, ":")
	owner, err := strconv.Atoi(pidStr)
	if !ok || err != nil {
		fmt.Fprintf(os.Stderr, "devenv reaper: bad %s=%q\n", reaperEnv, v)
		os.Exit(2)
	}
	os.Exit(reap(owner, dir))
}

func reap(owner int, dir string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP)
	fmt.Printf("devenv reaper: watching pid %d (%s)\n", owner, dir)
	<-sig
	// The signal comes at Stop (which has cleaned the host already) or
	// when the owner's spawning thread ends, normally with the owner.
	hs, err := readHostState()
	if err != nil || hs.Owner != owner || hs.Dir != dir {
		fmt.Println("devenv reaper: nothing to clean")
		return 0
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && processAlive(owner, hs.OwnerExe); {
		time.Sleep(50 * time.Millisecond)
	}
	if processAlive(owner, hs.OwnerExe) {
		fmt.Println("devenv reaper: the owner lives; it cleans up itself")
		return 0
	}
	fmt.Printf("devenv reaper: pid %d died without Stop; cleaning up\n", owner)
	if st, err := readState(dir); err == nil && st.Owner == owner {
		for _, p := range st.Procs {
			if p.Name != "reaper" && ours(p) {
				_ = syscall.Kill(-p.PID, syscall.SIGKILL)
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
	}
	if err := cleanHost(hs, func(f string, a ...any) { fmt.Printf(f+"\n", a...) }); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startReaper starts the reaper if this program can be one. Its death
// signal is SIGTERM, not SIGKILL: it must live to clean.
func (e *Env) startReaper() error {
	if !reapable.Load() {
		e.logf("devenv: no reaper (the program does not call devenv.MaybeReap): a SIGKILL of this process leaves the real node's containers and network until the next Start or `devenv down`")
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	if testing.Testing() {
		args = []string{"-test.run=^$"} // in case Main is not what handles it
	}
	_, err = e.startProc(procSpec{name: "reaper", path: self, args: args, deathSig: syscall.SIGTERM,
		env: []string{fmt.Sprintf("%s=%d:%s", reaperEnv, os.Getpid(), e.Dir)}})
	return err
}
