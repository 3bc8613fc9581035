package devenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	stateFile  = "state.json"
	tempPrefix = "parry-devenv-"
)

// state is what a directory records about its owner and servers, so that a
// directory left by a crashed run can be recognised and its servers ended.
type state struct {
	Owner    int         `json:"owner"`
	OwnerExe string      `json:"ownerExe"`
	Started  time.Time   `json:"started"`
	Procs    []procState `json:"procs"`
}

type procState struct {
	Name string `json:"name"`
	PID  int    `json:"pid"` // also the process group ID
	Exe  string `json:"exe"`
}

// InUseError reports a directory that belongs to a live environment.
type InUseError struct {
	Dir   string
	Owner int
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("devenv: %s is in use by a running environment (pid %d); stop it first (make devenv-down, or kill %d)", e.Dir, e.Owner, e.Owner)
}

func selfExe() string {
	exe, _ := os.Readlink("/proc/self/exe")
	return exe
}

func (e *Env) writeState() error {
	// Servers start side by side; one writer at a time keeps the file whole.
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	e.mu.Lock()
	st := state{Owner: os.Getpid(), OwnerExe: selfExe(), Started: time.Now()}
	if e.stopped {
		st = state{}
	}
	for _, p := range e.procs {
		exe := p.cmd.Path
		if p.exe != "" {
			exe = p.exe
		}
		st.Procs = append(st.Procs, procState{Name: p.name, PID: p.pid(), Exe: exe})
	}
	e.mu.Unlock()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	// Write-then-rename: a reader never sees half a file.
	tmp := filepath.Join(e.Dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("devenv: write state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(e.Dir, stateFile))
}

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("devenv: %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &st, nil
}

// OwnerAlive reports the PID of the live process that owns dir, or 0.
func OwnerAlive(dir string) int {
	st, err := readState(dir)
	if err != nil || !processAlive(st.Owner, st.OwnerExe) {
		return 0
	}
	return st.Owner
}

// CleanStale ends the servers recorded in dir by a run whose owner is gone
// and removes dir. It reports what it ended; an *InUseError means the owner
// is alive and nothing was touched. A dir without a state file is left alone
// (it may not be ours) unless it is empty.
func CleanStale(dir string) (ended []string, err error) {
	st, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		if entries, rerr := os.ReadDir(dir); rerr == nil && len(entries) > 0 {
			return nil, fmt.Errorf("devenv: %s is not empty and has no %s, so it is not a devenv directory; remove it or choose another", dir, stateFile)
		}
		return nil, os.RemoveAll(dir)
	}
	if err != nil {
		return nil, err
	}
	if processAlive(st.Owner, st.OwnerExe) {
		return nil, &InUseError{Dir: dir, Owner: st.Owner}
	}
	for _, p := range st.Procs {
		if ours(p) {
			_ = syscall.Kill(-p.PID, syscall.SIGKILL)
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
			ended = append(ended, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
		}
	}
	// Give the kernel a moment to reap them before their files go.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		alive := false
		for _, p := range st.Procs {
			alive = alive || ours(p)
		}
		if !alive {
			break
		}
	}
	// A real node's containers, mounts and network outlive its servers.
	if hs, err := readHostState(); err == nil && hs.Dir == dir && !processAlive(hs.Owner, hs.OwnerExe) {
		if err := cleanHost(hs, nil); err != nil {
			return ended, err
		}
		ended = append(ended, "the real node's containers, mounts and network")
	}
	// Never remove through a mount: a pod's volume may be a host path.
	if err := unmountUnder(dir); err != nil {
		return ended, fmt.Errorf("devenv: %w; not removing %s", err, dir)
	}
	return ended, os.RemoveAll(dir)
}

// ours reports whether a recorded server, or what is left of its process
// group, still runs. A PID now used by another program is not ours; a group
// whose leader is gone (PostgreSQL backends) still is, since no new process
// can lead a group with the dead leader's number unless it took that PID.
func ours(p procState) bool {
	if processAlive(p.PID, p.Exe) {
		return true
	}
	return syscall.Kill(p.PID, 0) != nil && groupAlive(p.PID)
}

// cleanStaleTemp removes temporary environments whose owner died without
// Stop (a SIGKILLed test binary); their servers died with it through the
// parent-death signal, so this only frees the disk and any straggler.
func cleanStaleTemp(logf func(string, ...any)) {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range matches {
		if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
			continue // no state yet: being created right now, or not ours
		}
		ended, err := CleanStale(dir)
		if err == nil && logf != nil {
			logf("devenv: removed %s left by a crashed run%s", dir, endedSuffix(ended))
		}
	}
}

func endedSuffix(ended []string) string {
	if len(ended) == 0 {
		return ""
	}
	return "; ended " + strings.Join(ended, ", ")
}

// prepareDir creates or takes over the environment's directory.
func (e *Env) prepareDir() error {
	if e.opts.Dir == "" {
		cleanStaleTemp(e.opts.Logf)
		dir, err := os.MkdirTemp("", tempPrefix)
		if err != nil {
			return fmt.Errorf("devenv: create temporary directory: %w", err)
		}
		e.Dir, e.ownsDir = dir, true
	} else {
		dir, err := filepath.Abs(e.opts.Dir)
		if err != nil {
			return err
		}
		ended, err := CleanStale(dir)
		if err != nil {
			return err
		}
		if len(ended) > 0 {
			e.logf("devenv: cleaned %s left by a crashed run%s", dir, endedSuffix(ended))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("devenv: create %s: %w", dir, err)
		}
		e.Dir = dir
	}
	// PostgreSQL runs as the postgres user and must reach its data
	// directory inside; it may traverse but not list.
	if err := os.Chmod(e.Dir, 0o711); err != nil {
		return err
	}
	for _, sub := range []string{"logs", "pki"} {
		if err := os.MkdirAll(filepath.Join(e.Dir, sub), 0o755); err != nil {
			return err
		}
	}
	return e.writeState()
}
