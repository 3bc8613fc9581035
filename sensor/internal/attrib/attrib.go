// Package attrib attributes kernel records to pods: cgroup id → cgroup path →
// pod UID and container id (from the kubelet's naming) → namespace, pod
// name, container name, image and owner (from the API server, when the
// sensor has a cluster).
//
// An identity is cached by cgroup id the first time the id is seen (for a
// new container that is its first exec) and kept for a TTL after it was last
// seen, so records read after the container, its cgroup or even its pod are
// gone are still attributed.
package attrib

import (
	"slices"
	"sync"
	"time"

	"parry.dev/parry/sensor/internal/cgroups"
)

// Identity is what the sensor knows about one cgroup. It is immutable once
// returned; a better-informed identity replaces it.
type Identity struct {
	CgroupID   uint64
	CgroupPath string // relative to the cgroup mount; "" if the cgroup was gone before it was resolved
	cgroups.PodRef
}

// InPod says whether the cgroup belongs to a pod.
func (id *Identity) InPod() bool { return id != nil && id.PodUID != "" }

// PodMeta is the API server's view of a pod.
type PodMeta struct {
	UID       string
	Namespace string
	Name      string
	// Owner is Kind/name of the controlling owner; a ReplicaSet created by
	// a Deployment is reported as that Deployment.
	Owner      string
	Containers map[string]ContainerMeta // by container id (without runtime prefix)
	Deleted    bool                     // the pod is gone from the API server
}

// ContainerMeta describes one container of a pod.
type ContainerMeta struct {
	Name    string
	Image   string
	ImageID string
}

// PodSource answers pod lookups by UID (the informer; a fake in tests).
type PodSource interface {
	Pod(uid string) (PodMeta, bool)
	Synced() bool
}

// Resolver maps a cgroup id to a path (cgroups.Resolver).
type Resolver interface {
	Path(id uint64) (string, error)
}

// Attributor caches identities by cgroup id.
type Attributor struct {
	res  Resolver // nil: only the names carried by exec records are used
	pods PodSource
	ttl  time.Duration
	max  int

	mu   sync.Mutex
	byID map[uint64]*entry
}

type entry struct {
	id   *Identity
	seen int64 // unix ns
}

// New returns an attributor. res and pods may be nil. Entries live ttl after
// they were last seen; at most max are kept.
func New(res Resolver, pods PodSource, ttl time.Duration, max int) *Attributor {
	if max <= 0 {
		max = 65536
	}
	return &Attributor{res: res, pods: pods, ttl: ttl, max: max, byID: map[uint64]*entry{}}
}

// Identify returns the identity of cgroup id. leaf and parent are the
// cgroup names an exec record carries ("" otherwise): they attribute a
// cgroup that is already gone. The hot path is one map lookup.
func (a *Attributor) Identify(id uint64, leaf, parent string, now time.Time) *Identity {
	ns := now.UnixNano()
	a.mu.Lock()
	e, ok := a.byID[id]
	if ok {
		e.seen = ns
		// Resolved already, or no names that could add to an
		// unresolved entry: the common case.
		if e.id.PodUID != "" || e.id.CgroupPath != "" || leaf == "" {
			a.mu.Unlock()
			return e.id
		}
	}
	a.mu.Unlock()

	// Resolve outside the lock: it is a syscall or two.
	ident := &Identity{CgroupID: id}
	if a.res != nil {
		if p, err := a.res.Path(id); err == nil {
			ident.CgroupPath = p
			ident.PodRef = cgroups.ParsePath(p)
		}
	}
	if ident.PodUID == "" && leaf != "" {
		ident.PodRef = cgroups.ParseNames(leaf, parent)
	}
	if ok && ident.PodUID == "" && ident.CgroupPath == "" {
		return e.id // nothing better learnt
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.byID) >= a.max {
		a.evictLocked(ns)
	}
	a.byID[id] = &entry{id: ident, seen: ns}
	return ident
}

// Sweep forgets identities not seen for the TTL.
func (a *Attributor) Sweep(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cut := now.Add(-a.ttl).UnixNano()
	for id, e := range a.byID {
		if e.seen < cut {
			delete(a.byID, id)
		}
	}
}

// evictLocked makes room: the oldest quarter goes.
func (a *Attributor) evictLocked(now int64) {
	seen := make([]int64, 0, len(a.byID))
	for _, e := range a.byID {
		seen = append(seen, e.seen)
	}
	slices.Sort(seen)
	cut := seen[len(seen)/4]
	for id, e := range a.byID {
		if e.seen <= cut {
			delete(a.byID, id)
		}
	}
}

// Len is the number of cached identities.
func (a *Attributor) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}

// OfPod lists the cached identities of a pod's cgroups.
func (a *Attributor) OfPod(uid string) []Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Identity
	for _, e := range a.byID {
		if e.id.PodUID == uid {
			out = append(out, *e.id)
		}
	}
	slices.SortFunc(out, func(x, y Identity) int {
		switch {
		case x.CgroupID < y.CgroupID:
			return -1
		case x.CgroupID > y.CgroupID:
			return 1
		}
		return 0
	})
	return out
}

// Meta returns the API server's view of the identity's pod and container,
// if there is a cluster and it knows (or knew) the pod.
func (a *Attributor) Meta(id *Identity) (PodMeta, ContainerMeta, bool) {
	if a.pods == nil || !id.InPod() {
		return PodMeta{}, ContainerMeta{}, false
	}
	pm, ok := a.pods.Pod(id.PodUID)
	if !ok {
		return PodMeta{}, ContainerMeta{}, false
	}
	return pm, pm.Containers[id.ContainerID], true
}

// Pods is the pod source, nil without a cluster.
func (a *Attributor) Pods() PodSource { return a.pods }
