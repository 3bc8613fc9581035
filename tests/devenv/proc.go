package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spawner starts child processes from one OS thread that stays locked for the
// life of the environment. Pdeathsig fires when the *thread* that forked a
// child exits, not the process; a thread of Go's pool may exit whenever a
// goroutine that locked it returns (eBPF and netns code in this project does
// that), which would kill a server at random. A dedicated thread that exits
// only in Stop makes the signal mean "the owner is gone".
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread()
		// Returning without UnlockOSThread ends the thread; by then Stop
		// has ended every child, and the parent-death signal catches any
		// straggler.
		for r := range s.reqs {
			r.errc <- r.cmd.Start()
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, errc: errc}
	return <-errc
}

func (s *spawner) close() { close(s.reqs) }

// proc is one running server.
type proc struct {
	name    string
	cmd     *exec.Cmd
	exe     string // what /proc/<pid>/exe shows once running, if not cmd.Path
	logPath string
	stopSig syscall.Signal
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// procSpec describes a server to start.
type procSpec struct {
	name     string
	path     string
	exe      string // the binary it execs into (a wrapper's target), if any
	args     []string
	env      []string            // added to a minimal environment
	cred     *syscall.Credential // run as another user (PostgreSQL refuses root)
	stopSig  syscall.Signal      // graceful stop signal; SIGTERM when zero
	deathSig syscall.Signal      // sent when the owner dies; SIGKILL when zero
}

func (e *Env) startProc(spec procSpec) (*proc, error) {
	logPath := filepath.Join(e.Dir, "logs", spec.name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("devenv: open log for %s: %w", spec.name, err)
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Dir = e.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", // kube-proxy runs nft, the kubelet mount and iptables
		"HOME=" + e.Dir, // vault -dev writes ~/.vault-token; keep it in the env dir
		"TMPDIR=" + os.TempDir(),
		"LANG=C.UTF-8",
	}, spec.env...)
	deathSig := spec.deathSig
	if deathSig == 0 {
		deathSig = syscall.SIGKILL
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true, // one group per server: Stop ends its children too
		Pdeathsig:  deathSig,
		Credential: spec.cred,
	}
	if err := e.spawn.start(cmd); err != nil {
		return nil, fmt.Errorf("devenv: start %s (%s): %w", spec.name, spec.path, err)
	}
	p := &proc{name: spec.name, cmd: cmd, exe: spec.exe, logPath: logPath, stopSig: spec.stopSig, done: make(chan struct{})}
	if p.stopSig == 0 {
		p.stopSig = syscall.SIGTERM
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	if err := e.writeState(); err != nil {
		return p, err
	}
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// procNamed is the running server called name, nil if there is none.
func (e *Env) procNamed(name string) *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// replaceProc moves p, the restart of old (which startProc appended),
// into old's place, since Stop ends the servers in order, and records it;
// a nil p leaves old there.
func (e *Env) replaceProc(old, p *proc) {
	if p == nil {
		return
	}
	e.mu.Lock()
	procs := make([]*proc, 0, len(e.procs))
	for _, q := range e.procs {
		switch q {
		case old:
			procs = append(procs, p)
		case p:
		default:
			procs = append(procs, q)
		}
	}
	e.procs = procs
	e.mu.Unlock()
	_ = e.writeState()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends the graceful signal to the process group, then SIGKILL after
// grace. It returns once the leader has been reaped.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		// The leader is gone, but children in its group may remain.
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		return
	}
	_ = syscall.Kill(-p.pid(), p.stopSig)
	select {
	case <-p.done:
	case <-time.After(grace):
		fmt.Fprintf(os.Stderr, "devenv: %s (pid %d) ignored %v for %s; killing it\n", p.name, p.pid(), p.stopSig, grace)
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL) // leftovers of the group
}

// failure describes a server that did not come up, with the tail of its log
// so the cause is in the error itself.
func (p *proc) failure(what string) error {
	state := "is still running"
	if p.exited() {
		state = fmt.Sprintf("exited (%v)", p.waitErr)
	}
	return fmt.Errorf("devenv: %s %s: %s; log %s ends with:\n%s", p.name, what, state, p.logPath, logTail(p.logPath, 25))
}

// logTail returns the last n lines of a log file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 64<<10 {
		b = b[len(b)-64<<10:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// portClash reports whether a server's log says that its port was taken
// between our probe and its bind; the caller then retries on new ports.
func portClash(logPath string) bool {
	b, _ := os.ReadFile(logPath)
	return bytes.Contains(bytes.ToLower(b), []byte("address already in use"))
}

// waitReady polls check until it succeeds, the process exits, or the timeout.
func waitReady(ctx context.Context, p *proc, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return p.failure("did not start")
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w\n(last readiness check: %v)", p.failure(fmt.Sprintf("was not ready within %s", timeout)), last)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// freePorts finds n free loopback TCP ports. They are held open together so
// that the n ports are distinct, then released for the server to bind; the
// remaining race with other programs is handled by retrying (portClash).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("devenv: no free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// processAlive reports whether pid exists and, when exe is not empty, still
// runs that executable (so a recycled PID is never killed by mistake).
func processAlive(pid int, exe string) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// A zombie has exited; only its parent's wait is missing.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			return false
		}
	}
	if exe == "" {
		return true
	}
	got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return true // cannot tell; assume it is ours
	}
	return strings.TrimSuffix(got, " (deleted)") == exe
}

// groupAlive reports whether any live (non-zombie) process is in process
// group pgid: a server's children (PostgreSQL's backends) count too.
func groupAlive(pgid int) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}
