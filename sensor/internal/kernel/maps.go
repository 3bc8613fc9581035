package kernel

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// Filter is what the kernel lets through; everything else never reaches
// userspace.
type Filter struct {
	Flags uint32 // Flag*
	// Signals is a bit mask, 1<<Sig*.
	Signals     uint32
	ExeNames    []string // basenames, shorter than 32 bytes
	Ports       []uint16
	Prefixes    []string // absolute paths; whole components match
	ScopeRoots  []uint64 // cgroup ids whose descendants are in scope
	WakeupBytes uint64   // unread bytes that wake the reader at once
}

// Name length limits of the kernel's filter maps.
const (
	ExeNameMax  = 32
	TrieNameMax = 64
)

// SetFilter replaces the kernel's filters. Entries are written before stale
// ones are deleted, so a reload never opens a window with no filter.
func (k *Kernel) SetFilter(f Filter) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	exe := map[parryExeKey]uint8{}
	for _, n := range f.ExeNames {
		if len(n) == 0 || len(n) >= ExeNameMax {
			return fmt.Errorf("exe name %q: 1 to %d bytes", n, ExeNameMax-1)
		}
		var key parryExeKey
		for i := range len(n) {
			key.Name[i] = int8(n[i])
		}
		exe[key] = 1
	}
	ports := map[uint16]uint8{}
	for _, p := range f.Ports {
		ports[p] = 1
	}
	trie, err := buildTrie(f.Prefixes)
	if err != nil {
		return err
	}
	scope := map[uint64]uint8{}
	for _, id := range f.ScopeRoots {
		scope[id] = 1
	}
	if err := syncMap(k.maps.ExeNames, exe); err != nil {
		return fmt.Errorf("exe_names: %w", err)
	}
	if err := syncMap(k.maps.Ports, ports); err != nil {
		return fmt.Errorf("ports: %w", err)
	}
	if err := syncMap(k.maps.PathTrie, trie); err != nil {
		return fmt.Errorf("path_trie: %w", err)
	}
	if err := syncMap(k.maps.ScopeRoots, scope); err != nil {
		return fmt.Errorf("scope_roots: %w", err)
	}
	var cur parrySensorConfig
	if err := k.maps.SensorCfg.Lookup(uint32(0), &cur); err != nil {
		return err
	}
	cfg := parrySensorConfig{
		Flags:       f.Flags | cur.Flags&flagBlocking,
		Signals:     f.Signals,
		WakeupBytes: f.WakeupBytes,
	}
	return k.maps.SensorCfg.Put(uint32(0), cfg)
}

// buildTrie turns prefixes into the kernel's component trie: node 0 is "/",
// each (parent, name) pair gets a node, and the last component of a prefix
// is terminal. Node numbers follow sorted input, so the same prefixes give
// the same map.
func buildTrie(prefixes []string) (map[parryTrieKey]parryTrieVal, error) {
	ps := slices.Clone(prefixes)
	slices.Sort(ps)
	out := map[parryTrieKey]parryTrieVal{}
	next := uint32(1)
	for _, p := range ps {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("path prefix %q: must be absolute", p)
		}
		comps := strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
		if len(comps) == 0 {
			return nil, fmt.Errorf("path prefix %q: \"/\" would match every open; name a directory or file", p)
		}
		node := uint32(0)
		for i, c := range comps {
			if c == "." || c == ".." {
				return nil, fmt.Errorf("path prefix %q: use a clean path (no . or ..)", p)
			}
			if len(c) >= TrieNameMax {
				return nil, fmt.Errorf("path prefix %q: component %q is longer than %d bytes", p, c, TrieNameMax-1)
			}
			var key parryTrieKey
			key.Parent = node
			key.Len = uint32(len(c))
			for j := range len(c) {
				key.Name[j] = int8(c[j])
			}
			v, ok := out[key]
			if !ok {
				v = parryTrieVal{Node: next}
				next++
			}
			if i == len(comps)-1 {
				v.Terminal = 1
			}
			out[key] = v
			node = v.Node
		}
	}
	return out, nil
}

// syncMap makes m hold exactly want.
func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	for k, v := range want {
		if err := m.Put(k, v); err != nil {
			return err
		}
	}
	var stale []K
	var key K
	var val V
	it := m.Iterate()
	for it.Next(&key, &val) {
		if _, ok := want[key]; !ok {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// Block makes connect() from the cgroup and every cgroup below it fail with
// EPERM.
func (k *Kernel) Block(cgroupID uint64) error {
	if cgroupID == 0 {
		return errors.New("blocking cgroup 0: not a cgroup id")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.maps.BlockedCgroups.Put(cgroupID, uint8(1)); err != nil {
		return fmt.Errorf("blocking cgroup %d: %w", cgroupID, err)
	}
	return k.updateBlocking()
}

// Unblock lifts Block.
func (k *Kernel) Unblock(cgroupID uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.maps.BlockedCgroups.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unblocking cgroup %d: %w", cgroupID, err)
	}
	return k.updateBlocking()
}

// Blocked lists the blocked cgroup ids.
func (k *Kernel) Blocked() ([]uint64, error) {
	var ids []uint64
	var id uint64
	var v uint8
	it := k.maps.BlockedCgroups.Iterate()
	for it.Next(&id, &v) {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, it.Err()
}

// updateBlocking (with mu held) sets the flag that makes the connect hooks look at the block
// list at all, so an empty list costs nothing.
func (k *Kernel) updateBlocking() error {
	ids, err := k.Blocked()
	if err != nil {
		return err
	}
	var cfg parrySensorConfig
	if err := k.maps.SensorCfg.Lookup(uint32(0), &cfg); err != nil {
		return err
	}
	if len(ids) > 0 {
		cfg.Flags |= flagBlocking
	} else {
		cfg.Flags &^= flagBlocking
	}
	return k.maps.SensorCfg.Put(uint32(0), cfg)
}

// Counts are the kernel's per-kind counters summed over CPUs.
type Counts struct {
	Seen    [NumKinds]uint64
	Dropped [NumKinds]uint64
}

// Counters reads the per-CPU seen/dropped counters.
func (k *Kernel) Counters() (Counts, error) {
	var c Counts
	vals := make([]uint64, k.ncpu)
	sum := func(idx uint32) (uint64, error) {
		if err := k.maps.Counters.Lookup(idx, &vals); err != nil {
			return 0, fmt.Errorf("reading counters: %w", err)
		}
		var n uint64
		for _, v := range vals {
			n += v
		}
		return n, nil
	}
	for kind := uint32(1); kind < uint32(NumKinds); kind++ {
		var err error
		if c.Seen[kind], err = sum(kind*cntStride + cntSeen); err != nil {
			return c, err
		}
		if c.Dropped[kind], err = sum(kind*cntStride + cntDropped); err != nil {
			return c, err
		}
	}
	return c, nil
}
