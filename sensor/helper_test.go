package sensor_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// helper is the workload run inside test pods.
func helper(mode string, args []string) int {
	switch mode {
	case "udp-storm": // addr count: connect a UDP socket count times
		ap := netip.MustParseAddrPort(args[0])
		n := atoi(args[1])
		return udpConnects(ap.Addr(), func(int) uint16 { return ap.Port() }, n)
	case "udp-paced": // addr rate duration: connect a UDP socket rate times a second, in 1ms steps
		ap := netip.MustParseAddrPort(args[0])
		rate := atoi(args[1])
		d := duration(args[2])
		start := time.Now()
		for done := 0; time.Since(start) < d; {
			due := int(time.Since(start).Seconds() * float64(rate))
			if rc := udpConnects(ap.Addr(), func(int) uint16 { return ap.Port() }, due-done); rc != 0 {
				return rc
			}
			done = due
			time.Sleep(time.Millisecond)
		}
		return 0
	case "udp-ports": // base count: one connect to each port from base on
		base := atoi(args[0])
		n := atoi(args[1])
		return udpConnects(netip.MustParseAddr("127.0.0.1"), func(i int) uint16 { return uint16(base + i) }, n)
	case "udp-ports-shadow": // udp-ports, then a read of /etc/shadow
		base := atoi(args[0])
		n := atoi(args[1])
		if rc := udpConnects(netip.MustParseAddr("127.0.0.1"), func(i int) uint16 { return uint16(base + i) }, n); rc != 0 {
			return rc
		}
		if _, err := os.ReadFile("/etc/shadow"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 4
		}
		return 0
	case "setuid-storm": // drop to nobody, then n refused setuid(0) calls, gap apart
		n := atoi(args[0])
		gap := duration(args[1])
		if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
			fmt.Fprintln(os.Stderr, "setresuid:", err)
			return 1
		}
		for range n {
			if _, _, e := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0); e != unix.EPERM {
				fmt.Fprintln(os.Stderr, "setuid(0) as nobody:", e)
				return 1
			}
			time.Sleep(gap)
		}
		return 0
	case "priv":
		return privileged()
	case "probe":
		return probeUnprivileged()
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// atoi and duration parse the helper's arguments; one that does not parse
// ends the helper (it runs in a process of its own) with status 2, which
// fails the test that ran it.
func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		badArg(err)
	}
	return n
}

func duration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		badArg(err)
	}
	return d
}

func badArg(err error) {
	fmt.Fprintln(os.Stderr, "helper argument:", err)
	os.Exit(2)
}

func udpConnects(addr netip.Addr, port func(int) uint16, n int) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer unix.Close(fd)
	for i := range n {
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: addr.As4(), Port: int(port(i))}); err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			return 3
		}
	}
	return 0
}

// privileged performs each privilege and evasion signal once: memfd_create,
// unshare, ptrace (seize a child), setresuid/setresgid to nobody, and last
// an exec of the memfd (a fileless executable).
func privileged() int {
	fd, err := unix.MemfdCreate("parry-payload", 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memfd_create:", err)
		return 1
	}
	bin, err := os.ReadFile("/usr/bin/true")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := unix.Write(fd, bin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
		fmt.Fprintln(os.Stderr, "unshare:", err)
		return 1
	}
	child := exec.Command("/usr/bin/sleep", "5")
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(child.Process.Pid), 0, 0, 0, 0); e != 0 {
		fmt.Fprintln(os.Stderr, "ptrace seize:", e)
		return 1
	}
	child.Process.Kill()
	child.Wait() // killed: the error is the signal
	if err := syscall.Setresgid(65534, 65534, 65534); err != nil {
		fmt.Fprintln(os.Stderr, "setresgid:", err)
		return 1
	}
	if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
		fmt.Fprintln(os.Stderr, "setresuid:", err)
		return 1
	}
	// fexecve: execveat(fd, "", argv, envp, AT_EMPTY_PATH)
	// (these fail only on a NUL inside a string)
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	argv, err := syscall.SlicePtrFromStrings([]string{"payload"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	envp, err := syscall.SlicePtrFromStrings(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envp[0])), unix.AT_EMPTY_PATH, 0)
	fmt.Fprintln(os.Stderr, "execveat:", e)
	return 1
}
