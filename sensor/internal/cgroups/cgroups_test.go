package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified\040dir rw,relatime - cgroup2 cgroup2 rw
`

func TestParseMountinfo(t *testing.T) {
	m := parseMountinfo([]byte(hybridMountinfo))
	if m.V2 != "/sys/fs/cgroup/unified dir" || m.MemoryV1 != "/sys/fs/cgroup/memory" {
		t.Fatalf("%+v", m)
	}
	if m := parseMountinfo([]byte("25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")); m.V2 != "/sys/fs/cgroup" || m.MemoryV1 != "" {
		t.Fatalf("pure v2: %+v", m)
	}
}

const (
	uid = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	cid = "4f3e2d1c0b0a09080706050403020100ffeeddccbbaa99887766554433221100"
)

func TestParsePath(t *testing.T) {
	us := "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6"
	cases := []struct {
		path string
		want PodRef
	}{
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + cid + ".scope",
			PodRef{PodUID: uid, ContainerID: cid, Runtime: "containerd", QoS: "besteffort",
				PodPath: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice"}},
		{"/kubepods.slice/kubepods-pod" + us + ".slice/crio-" + cid + ".scope",
			PodRef{PodUID: uid, ContainerID: cid, Runtime: "crio", QoS: "guaranteed", PodPath: "/kubepods.slice/kubepods-pod" + us + ".slice"}},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/docker-" + cid + ".scope",
			PodRef{PodUID: uid, ContainerID: cid, Runtime: "docker", QoS: "burstable", PodPath: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice"}},
		{"/kubepods/burstable/pod" + uid + "/" + cid,
			PodRef{PodUID: uid, ContainerID: cid, QoS: "burstable", PodPath: "/kubepods/burstable/pod" + uid}},
		{"/kubepods/pod" + uid + "/" + cid,
			PodRef{PodUID: uid, ContainerID: cid, QoS: "guaranteed", PodPath: "/kubepods/pod" + uid}},
		// kind: the kubelet's tree below the node container's cgroup
		{"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + cid + ".scope",
			PodRef{PodUID: uid, ContainerID: cid, Runtime: "containerd", QoS: "besteffort",
				PodPath: "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + us + ".slice"}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice",
			PodRef{PodUID: uid, QoS: "besteffort", PodPath: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice"}},
		{"/user.slice/user-0.slice/session-1.scope", PodRef{}},
		{"/", PodRef{}},
		{"/pod" + uid + "/" + cid, PodRef{}}, // pod<uid> outside kubepods is not a pod
	}
	for _, c := range cases {
		if got := ParsePath(c.path); got != c.want {
			t.Errorf("ParsePath(%s)\n got  %+v\n want %+v", c.path, got, c.want)
		}
	}
}

func TestParseNames(t *testing.T) {
	us := "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6"
	got := ParseNames("cri-containerd-"+cid+".scope", "kubepods-besteffort-pod"+us+".slice")
	if got.PodUID != uid || got.ContainerID != cid || got.Runtime != "containerd" {
		t.Fatalf("systemd names: %+v", got)
	}
	got = ParseNames(cid, "pod"+uid)
	if got.PodUID != uid || got.ContainerID != cid {
		t.Fatalf("cgroupfs names: %+v", got)
	}
	if got := ParseNames("session-1.scope", "user-0.slice"); got.PodUID != "" {
		t.Fatalf("host names: %+v", got)
	}
}

// TestResolver resolves a real cgroup's id to its path by file handle, and
// reports ErrGone once it is removed.
func TestResolver(t *testing.T) {
	m, err := Discover("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if m.V2 == "" || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true needs root and a cgroup2 mount (have euid %d, mounts %+v)", os.Geteuid(), m)
		}
		t.Skip("needs root and a cgroup2 mount")
	}
	r, err := NewResolver(m.V2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rel := fmt.Sprintf("/parry-test-resolver-%d", os.Getpid())
	dir := filepath.Join(m.V2, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := r.ID(rel)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Path(id)
	if err != nil || got != rel {
		t.Fatalf("Path(%d) = %q, %v; want %q", id, got, err, rel)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Path(id); !errors.Is(err, ErrGone) {
		t.Fatalf("after rmdir: %v, want ErrGone", err)
	}
	// the walk fallback finds the same path
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	if id, err = r.ID(rel); err != nil {
		t.Fatal(err)
	}
	r.walkPeriod = 0
	if got, err := r.byWalk(id); err != nil || got != rel {
		t.Fatalf("byWalk(%d) = %q, %v", id, got, err)
	}
}
