// Package cgroups maps the cgroup ids the BPF programs report to cgroup
// directories and those to the pod UID and container id the kubelet encodes
// in them.
//
// bpf_get_current_cgroup_id() is the inode number of the task's cgroup v2
// directory, so an id resolves by file handle (open_by_handle_at on the
// cgroup2 mount, one syscall) and, where handles are unsupported, by walking
// the hierarchy. Where the kubelet runs on cgroup v1 only, the v1 memory
// controller's directory id plays the same role.
package cgroups

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mounts are the cgroup hierarchies the sensor can attribute with.
type Mounts struct {
	V2       string // cgroup2 mount point, "" without one
	MemoryV1 string // cgroup v1 memory controller mount point, "" without one
}

// Discover reads the cgroup mounts from a mountinfo file
// (/proc/self/mountinfo).
func Discover(mountinfo string) (Mounts, error) {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return Mounts{}, fmt.Errorf("reading %s to find the cgroup mounts: %w", mountinfo, err)
	}
	return parseMountinfo(b), nil
}

func parseMountinfo(b []byte) Mounts {
	var m Mounts
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf := strings.Fields(pre)
		qf := strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 {
			continue
		}
		mp := unescape(pf[4])
		switch qf[0] {
		case "cgroup2":
			if m.V2 == "" {
				m.V2 = mp
			}
		case "cgroup":
			if len(qf) >= 3 && m.MemoryV1 == "" && hasOpt(qf[2], "memory") {
				m.MemoryV1 = mp
			}
		}
	}
	return m
}

func hasOpt(opts, want string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// fileidKernfs is FILEID_KERNFS: a kernfs file handle is the node's 64-bit id.
const fileidKernfs = 0xfe

// Resolver turns cgroup ids into paths relative to one cgroup mount.
type Resolver struct {
	root    string
	mountFD int

	mu         sync.Mutex
	handlesOK  bool
	walked     map[uint64]string
	lastWalk   time.Time
	walkPeriod time.Duration
}

// NewResolver opens the cgroup mount at root.
func NewResolver(root string) (*Resolver, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup mount %s: %w", root, err)
	}
	return &Resolver{root: filepath.Clean(root), mountFD: fd, handlesOK: true, walkPeriod: time.Second}, nil
}

// Root is the mount point.
func (r *Resolver) Root() string { return r.root }

// Close releases the mount's descriptor.
func (r *Resolver) Close() error { return unix.Close(r.mountFD) }

// ErrGone means the cgroup no longer exists (or never did).
var ErrGone = errors.New("cgroup not found (removed already?)")

// Path returns the cgroup's path relative to the mount, starting with "/".
func (r *Resolver) Path(id uint64) (string, error) {
	r.mu.Lock()
	useHandles := r.handlesOK
	r.mu.Unlock()
	if useHandles {
		p, err := r.byHandle(id)
		if err == nil {
			return p, nil
		}
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			return "", ErrGone
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
			return "", fmt.Errorf("resolving cgroup %d: %w", id, err)
		}
		// This hierarchy (or this kernel, or our capabilities) has no file
		// handles: fall back to walking it.
		r.mu.Lock()
		r.handlesOK = false
		r.mu.Unlock()
	}
	return r.byWalk(id)
}

func (r *Resolver) byHandle(id uint64) (string, error) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(r.mountFD, unix.NewFileHandle(fileidKernfs, b[:]), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	abs, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	return r.rel(abs), nil
}

func (r *Resolver) rel(abs string) string {
	rel := strings.TrimPrefix(abs, r.root)
	if rel == "" {
		return "/"
	}
	return rel
}

// byWalk rebuilds the id table at most once per walkPeriod.
func (r *Resolver) byWalk(id uint64) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.walked[id]; ok {
		return p, nil
	}
	if time.Since(r.lastWalk) < r.walkPeriod {
		return "", ErrGone
	}
	r.lastWalk = time.Now()
	r.walked = map[uint64]string{}
	_ = filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				r.walked[st.Ino] = r.rel(p)
			}
		}
		return nil
	})
	if p, ok := r.walked[id]; ok {
		return p, nil
	}
	return "", ErrGone
}

// ID returns the id of the cgroup at path (relative to the mount).
func (r *Resolver) ID(rel string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(r.root, rel), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
