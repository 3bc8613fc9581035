// Package podcgroup runs test workloads inside pod-shaped cgroups, named as
// the kubelet's systemd driver names them
// (kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
// cri-containerd-<id>.scope), so the real sensor attributes them to a pod
// without a cluster. It needs root and cgroup v2.
package podcgroup

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Require fails the test when it cannot run here — not root, no cgroup v2
// — under CI=true, and skips it otherwise: in CI these tests must run.
func Require(t testing.TB) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root (BPF and cgroups)"
	} else if _, err := Mount(); err != nil {
		why = err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s", why)
	}
	t.Skip(why)
}

// Mount returns the cgroup v2 mount point.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fields := strings.Fields(right); len(fields) > 0 && fields[0] == "cgroup2" {
			if lf := strings.Fields(left); len(lf) >= 5 {
				return lf[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// EnsureRoot creates kubepods.slice, so that a sensor started afterwards
// has it in scope from its first moment.
func EnsureRoot() error {
	m, err := Mount()
	if err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(m, "kubepods.slice"), 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return nil
}

// Pod is one pod-shaped cgroup with one container.
type Pod struct {
	UID         string // as the kubelet names it, with dashes
	ContainerID string // 64 hex
	Dir         string // the container's cgroup directory
	created     []string
}

// New creates a pod cgroup with a random UID and container id; it is
// removed when the test ends (once its processes have exited).
func New(t testing.TB) *Pod {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return NewFor(t, h[0:8]+"-"+h[8:12]+"-"+h[12:16]+"-"+h[16:20]+"-"+h[20:32])
}

// NewFor creates the cgroup the kubelet would make for the pod with uid (a
// real pod's, so the sensor's informer attributes it), with a random
// container id.
func NewFor(t testing.TB, uid string) *Pod {
	t.Helper()
	m, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 32)
	rand.Read(b)
	p := &Pod{UID: uid, ContainerID: hex.EncodeToString(b)}
	dir := m
	for _, c := range []string{
		"kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod" + strings.ReplaceAll(p.UID, "-", "_") + ".slice",
		"cri-containerd-" + p.ContainerID + ".scope",
	} {
		dir = filepath.Join(dir, c)
		if err := os.Mkdir(dir, 0o755); err == nil {
			p.created = append(p.created, dir)
		} else if !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	p.Dir = dir
	t.Cleanup(p.Remove)
	return p
}

// Remove deletes the pod's cgroups now, as the kubelet does when a pod ends
// (the ephemeral case); it runs at the end of the test anyway.
func (p *Pod) Remove() {
	for i := len(p.created) - 1; i >= 0; i-- {
		if strings.HasSuffix(p.created[i], "kubepods.slice") {
			continue // shared by every pod, and a running sensor's scope
		}
		// A cgroup can only go once its processes have exited.
		for range 100 {
			if err := os.Remove(p.created[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Command returns a command that starts inside the container's cgroup
// (clone3 with CLONE_INTO_CGROUP: it is there before it execs).
func (p *Pod) Command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	fd, err := syscall.Open(p.Dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	return cmd
}

// Run runs a command in the pod and returns its combined output.
func (p *Pod) Run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	out, err := p.Command(t, name, args...).CombinedOutput()
	return string(out), err
}

// Listen starts a loopback TCP server that accepts and closes every
// connection, for workloads to connect to, until the test ends. addr may
// name port 0; the bound address is returned.
func Listen(t testing.TB, addr string) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}
