package kernel

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/rs/zerolog"

	"parry.dev/parry/sensor/internal/cgroups"
)

func TestBuildTrie(t *testing.T) {
	trie, err := buildTrie([]string{"/etc/shadow", "/etc/ssh", "/root/.ssh"})
	if err != nil {
		t.Fatal(err)
	}
	// etc, shadow, ssh, root, .ssh
	if len(trie) != 5 {
		t.Fatalf("%d nodes", len(trie))
	}
	terminal := 0
	for _, v := range trie {
		if v.Terminal == 1 {
			terminal++
		}
	}
	if terminal != 3 {
		t.Fatalf("%d terminal nodes, want 3", terminal)
	}
	again, err := buildTrie([]string{"/root/.ssh", "/etc/ssh", "/etc/shadow"})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range trie {
		if again[k] != v {
			t.Fatal("trie depends on the order of the prefixes")
		}
	}
	for _, bad := range []string{"etc", "/", "/etc/../root", "/" + string(make([]byte, 70))} {
		if _, err := buildTrie([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestLoad loads every program on this kernel: the hooks the design relies
// on must be active, filters and the block list must round-trip, and the
// verifier's work must stay far below its limit (bpf_loop keeps it small).
func TestLoad(t *testing.T) {
	if err := Probe(""); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
	m, err := cgroups.Discover("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	k, err := Load(Options{Cgroup2Path: m.V2, RingBufferSize: 1 << 16}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	active := map[string]bool{}
	for _, h := range k.Hooks() {
		active[h.Name] = h.Active
	}
	for _, want := range []string{"exec", "exit", "connect4", "connect6", "open.openat", "priv.setuid", "priv.ptrace", "priv.memfd_create", "priv.unshare", "priv.setns"} {
		if !active[want] {
			t.Errorf("hook %s inactive: %+v", want, k.Hooks())
		}
	}
	for name, p := range k.loaded {
		info, err := p.Info()
		if err != nil {
			continue
		}
		if n, ok := info.VerifiedInstructions(); ok && n > 50000 {
			t.Errorf("%s: the verifier processed %d instructions; loops must go through bpf_loop", name, n)
		}
	}
	if err := k.SetFilter(Filter{Flags: FlagExec | FlagExecAll, Prefixes: []string{"/etc/shadow"}, Ports: []uint16{443}, ExeNames: []string{"nc"}}); err != nil {
		t.Fatal(err)
	}
	if err := k.SetFilter(Filter{ExeNames: []string{"this-name-is-far-too-long-for-the-map"}}); err == nil {
		t.Error("over-long exe name accepted")
	}
	if err := k.Block(42); err != nil {
		t.Fatal(err)
	}
	if ids, err := k.Blocked(); err != nil || len(ids) != 1 || ids[0] != 42 {
		t.Fatalf("blocked %v %v", ids, err)
	}
	if err := k.Unblock(42); err != nil {
		t.Fatal(err)
	}
	if ids, err := k.Blocked(); err != nil || len(ids) != 0 {
		t.Fatalf("blocked after unblock: %v %v", ids, err)
	}
	if _, err := k.Counters(); err != nil {
		t.Fatal(err)
	}
}

func TestRingSizeChecked(t *testing.T) {
	if err := checkRingSize(3000); err == nil {
		t.Error("3000 accepted")
	}
	if err := checkRingSize(os.Getpagesize() * 4); err != nil {
		t.Error(err)
	}
}

// TestOpenSyscallsPerArch: arm64 has no open or creat, so no hooks for them.
func TestOpenSyscallsPerArch(t *testing.T) {
	if got := openSyscalls("amd64"); len(got) != 5 {
		t.Errorf("amd64: %v", got)
	}
	for _, sc := range openSyscalls("arm64") {
		if sc == "open" || sc == "creat" {
			t.Errorf("arm64 hooks %s, which it does not have", sc)
		}
	}
}

// TestEveryArchObject: the object of every architecture (ko.yaml builds
// amd64 and arm64; only the native one is embedded here) holds the
// programs, maps and variables the loader names.
func TestEveryArchObject(t *testing.T) {
	native, err := loadParry()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := filepath.Glob("parry_*_bpfel.o")
	if err != nil || len(objs) < 2 {
		t.Fatalf("objects %v: %v; want one per architecture", objs, err)
	}
	for _, o := range objs {
		spec, err := ebpf.LoadCollectionSpec(o)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		for what, pair := range map[string][2][]string{
			"programs":  {slices.Sorted(maps.Keys(spec.Programs)), slices.Sorted(maps.Keys(native.Programs))},
			"maps":      {slices.Sorted(maps.Keys(spec.Maps)), slices.Sorted(maps.Keys(native.Maps))},
			"variables": {slices.Sorted(maps.Keys(spec.Variables)), slices.Sorted(maps.Keys(native.Variables))},
		} {
			if !slices.Equal(pair[0], pair[1]) {
				t.Errorf("%s %s: %v, native: %v", o, what, pair[0], pair[1])
			}
		}
	}
}
