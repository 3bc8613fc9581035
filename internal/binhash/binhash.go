// Package binhash hashes what a pod's process executed, through the host's
// /proc, only while the PID is still that process of that pod. The sensor
// (GET /v1/pods/{uid}/binaries) and the snapshot step (without a sensor
// that serves them) share it. It imports only the standard library.
package binhash

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Process is a process the flight recorder holds: its host PID and the
// path it executed.
type Process struct {
	PID uint32
	Exe string
}

// Hash hashes what a process of the pod executed, in the pod's mount
// namespace, never in this process's own: pid is the host PID the sensor
// recorded, so proc must be the host's /proc (the caller runs in the host
// PID namespace: the sensor, or a step under parry run). Before it reads
// anything it checks that the PID is still that process of that pod: the
// process's cgroup names the pod's UID and its exe is exe, so a reused PID,
// or a PID that means another process in this PID namespace, is never
// hashed. It reads /proc/<pid>/exe (the very file executed, also when
// deleted), else /proc/<pid>/root/<exe> (the path in the pod's
// filesystem). It returns "sha256:<hex> (<path read>)", or, when the
// process has exited or is not visible from here, "unreadable: <why>":
// there is no fallback to the path in this process's filesystem, which is
// another file.
func Hash(proc string, pid uint32, exe, podUID string) string {
	base := filepath.Join(proc, strconv.FormatUint(uint64(pid), 10))
	cg, err := os.ReadFile(filepath.Join(base, "cgroup"))
	if err != nil {
		return fmt.Sprintf("unreadable: process %d has exited or is not visible from this PID namespace (the sensor's PIDs are the host's)", pid)
	}
	if !InPod(string(cg), podUID) {
		return fmt.Sprintf("unreadable: PID %d is no longer a process of pod %s (it exited and the PID was reused, or this is another PID namespace)", pid, podUID)
	}
	if link, err := os.Readlink(filepath.Join(base, "exe")); err != nil || strings.TrimSuffix(link, " (deleted)") != exe {
		return fmt.Sprintf("unreadable: process %d no longer runs %s (it exec'd again or exited)", pid, exe)
	}
	for _, path := range []string{filepath.Join(base, "exe"), filepath.Join(base, "root", exe)} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err == nil {
			return "sha256:" + hex.EncodeToString(h.Sum(nil)) + " (" + path + ")"
		}
	}
	return fmt.Sprintf("unreadable: neither %s/exe nor %s/root%s could be read", base, base, exe)
}

// InPod says whether the contents of a /proc/<pid>/cgroup name the pod's
// UID (as the cgroupfs driver writes it, or the systemd driver, with
// underscores).
func InPod(cgroup, podUID string) bool {
	return podUID != "" && (strings.Contains(cgroup, podUID) || strings.Contains(cgroup, strings.ReplaceAll(podUID, "-", "_")))
}

// Pod hashes each executable of procs once, keyed by its path: the first
// process that can be hashed gives its hash; when none can, the reason of
// the last one tried stays. Processes without a path are skipped.
func Pod(proc, podUID string, procs []Process) map[string]string {
	out := map[string]string{}
	for _, p := range procs {
		if p.Exe == "" {
			continue
		}
		if prev, done := out[p.Exe]; done && strings.HasPrefix(prev, "sha256:") {
			continue
		}
		out[p.Exe] = Hash(proc, p.PID, p.Exe, podUID)
	}
	return out
}
