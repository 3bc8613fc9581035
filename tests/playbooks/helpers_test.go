package playbooks

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain doubles as the workloads the tests run in pods: with
// PARRY_PLAYBOOK_HELPER set, the test binary does one attack step and exits.
func TestMain(m *testing.M) {
	if mode := os.Getenv("PARRY_PLAYBOOK_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func helper(mode string, args []string) int {
	var err error
	switch mode {
	case "connect":
		var c net.Conn
		c, err = net.DialTimeout("tcp", args[0], 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		err = nil // a refused or unroutable connect was still attempted
	case "setuid":
		if err = syscall.Setgid(65534); err == nil {
			err = syscall.Setuid(65534)
		}
	case "ptrace":
		err = ptraceChild()
	case "memfd-exec":
		err = memfdExec()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// ptraceChild attaches to a child process and detaches again.
func ptraceChild() error {
	runtime.LockOSThread()
	child := exec.Command("sleep", "5")
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	if err := syscall.PtraceAttach(child.Process.Pid); err != nil {
		return fmt.Errorf("ptrace attach: %w", err)
	}
	var ws syscall.WaitStatus
	syscall.Wait4(child.Process.Pid, &ws, 0, nil)
	return syscall.PtraceDetach(child.Process.Pid)
}

// memfdExec copies /bin/true into a memfd and executes it: a program with
// no file on disk.
func memfdExec() error {
	fd, err := unix.MemfdCreate("payload", 0)
	if err != nil {
		return err
	}
	src, err := os.Open("/bin/true")
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "memfd")
	if _, err := io.Copy(f, src); err != nil {
		return err
	}
	return syscall.Exec(fmt.Sprintf("/proc/self/fd/%d", fd), []string{"payload"}, os.Environ())
}
