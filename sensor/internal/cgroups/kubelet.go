package cgroups

import (
	"regexp"
	"strings"
)

// PodRef is what a cgroup path says about the pod and container in it.
type PodRef struct {
	PodUID      string
	ContainerID string // 64 hex digits, without the runtime prefix
	Runtime     string // containerd, crio, docker, podman; "" for cgroupfs paths
	QoS         string // guaranteed, burstable, besteffort
	// PodPath is the path of the pod-level cgroup (for blocking every
	// container of the pod at once).
	PodPath string
}

var (
	// systemd driver: kubepods-burstable-pod<uid with _>.slice; a kubelet
	// with --cgroup-root (kind: "kubelet") prefixes every slice name with it.
	systemdPod = regexp.MustCompile(`^(?:[a-z0-9_.]+-)*kubepods(?:-(besteffort|burstable))?-pod([0-9a-f_]{36})\.slice$`)
	// cgroupfs driver: pod<uid>
	cgroupfsPod = regexp.MustCompile(`^pod([0-9a-f-]{36})$`)
	// systemd container scopes by runtime
	scope = regexp.MustCompile(`^(cri-containerd|crio|docker|libpod)-([0-9a-f]{64})\.scope$`)
	// cgroupfs container directories (containerd, docker); CRI-O uses crio-<id>
	bareID = regexp.MustCompile(`^(?:crio-)?([0-9a-f]{64})$`)
)

var runtimes = map[string]string{
	"cri-containerd": "containerd",
	"crio":           "crio",
	"docker":         "docker",
	"libpod":         "podman",
}

// ParsePath reads the kubelet's path forms, wherever the kubepods tree sits
// (kind and nested setups put it below another cgroup):
//
//	systemd:  .../kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope (crio-, docker-)
//	cgroupfs: .../kubepods/<qos>/pod<uid>/<id>
//
// A path outside any pod yields the zero PodRef; a pod-level path yields the
// pod UID without a container.
func ParsePath(path string) PodRef {
	comps := strings.Split(strings.Trim(path, "/"), "/")
	for i, c := range comps {
		var ref PodRef
		if m := systemdPod.FindStringSubmatch(c); m != nil {
			ref.PodUID = strings.ReplaceAll(m[2], "_", "-")
			ref.QoS = qos(m[1])
		} else if m := cgroupfsPod.FindStringSubmatch(c); m != nil && i > 0 && underKubepods(comps[:i]) {
			ref.PodUID = m[1]
			ref.QoS = "guaranteed"
			if p := comps[i-1]; p == "besteffort" || p == "burstable" {
				ref.QoS = p
			}
		} else {
			continue
		}
		ref.PodPath = "/" + strings.Join(comps[:i+1], "/")
		if i+1 < len(comps) {
			next := comps[i+1]
			if m := scope.FindStringSubmatch(next); m != nil {
				ref.Runtime = runtimes[m[1]]
				ref.ContainerID = m[2]
			} else if m := bareID.FindStringSubmatch(next); m != nil {
				ref.ContainerID = m[1]
				if strings.HasPrefix(next, "crio-") {
					ref.Runtime = "crio"
				}
			}
		}
		return ref
	}
	return PodRef{}
}

// ParseNames reads the same forms from the two names the exec record carries
// (the task's cgroup and its parent), for cgroups already removed when the
// record is read.
func ParseNames(leaf, parent string) PodRef {
	if leaf == "" {
		return PodRef{}
	}
	ref := ParsePath(parent + "/" + leaf)
	if ref.PodUID == "" && parent != "" {
		// cgroupfs: the parent's parent ("kubepods" or the QoS class) is
		// not in the record; accept pod<uid>/<id> on its own.
		if m := cgroupfsPod.FindStringSubmatch(parent); m != nil {
			ref = ParsePath("kubepods/" + parent + "/" + leaf)
			ref.QoS = ""
		}
	}
	ref.PodPath = "" // only a partial path is known
	return ref
}

func underKubepods(comps []string) bool {
	for _, c := range comps {
		if c == "kubepods" || strings.HasPrefix(c, "kubepods") {
			return true
		}
	}
	return false
}

func qos(s string) string {
	if s == "" {
		return "guaranteed"
	}
	return s
}
