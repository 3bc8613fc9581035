package kernel_test

import (
	"slices"
	"testing"
	"unsafe"

	"parry.dev/parry/sensor/filters"
	"parry.dev/parry/sensor/internal/kernel"
	"parry.dev/parry/sensor/internal/wire"
)

// TestLayoutMatchesParser ties the Go parser's offsets to the C structs as
// bpf2go generated them: a change to bpf/parry.h without the parser fails
// here. (The sizes, kinds, signals and flags the parser takes from the
// generated bindings; the offsets it reads at and the limits are its own.)
func TestLayoutMatchesParser(t *testing.T) {
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"rec_hdr", unsafe.Sizeof(kernel.RecHdr{}), uintptr(wire.HeaderSize)},
		{"rec_hdr.comm", unsafe.Offsetof(kernel.RecHdr{}.Comm), 64},
		{"rec_hdr.cgroup_id", unsafe.Offsetof(kernel.RecHdr{}.CgroupId), 16},
		{"rec_hdr.egid", unsafe.Offsetof(kernel.RecHdr{}.Egid), 56},
		{"exec_rec", unsafe.Sizeof(kernel.ExecRec{}), uintptr(wire.ExecFixedSize)},
		{"exec_rec.cg_len", unsafe.Offsetof(kernel.ExecRec{}.CgLen), 88},
		{"exit_rec", unsafe.Sizeof(kernel.ExitRec{}), uintptr(wire.ExitSize)},
		{"exit_rec.start_ktime", unsafe.Offsetof(kernel.ExitRec{}.StartKtime), 88},
		{"connect_rec", unsafe.Sizeof(kernel.ConnectRec{}), uintptr(wire.ConnectSize)},
		{"connect_rec.daddr", unsafe.Offsetof(kernel.ConnectRec{}.Daddr), 88},
		{"connect_rec.proto", unsafe.Offsetof(kernel.ConnectRec{}.Proto), 84},
		{"open_rec", unsafe.Sizeof(kernel.OpenRec{}), uintptr(wire.OpenFixedSize)},
		{"open_rec.fd", unsafe.Offsetof(kernel.OpenRec{}.Fd), 88},
		{"priv_rec", unsafe.Sizeof(kernel.PrivRec{}), uintptr(wire.PrivSize)},
		{"priv_rec.ret", unsafe.Offsetof(kernel.PrivRec{}.Ret), 88},
		{"priv_rec.old_uid", unsafe.Offsetof(kernel.PrivRec{}.OldUid), 120},
		{"priv_rec.name", unsafe.Offsetof(kernel.PrivRec{}.Name), 136},
		{"priv_rec.name size", unsafe.Sizeof(kernel.PrivRec{}.Name), uintptr(wire.PrivSize - 136)},
		{"trie_key.name", unsafe.Sizeof(kernel.TrieKey{}.Name), kernel.TrieNameMax},
		{"exe_key.name", unsafe.Sizeof(kernel.ExeKey{}.Name), kernel.ExeNameMax},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: C layout says %d, Go parser uses %d", c.name, c.got, c.want)
		}
	}
}

// TestSignalNames: the C header numbers the signals, Go names them (the
// parser, and the filter schema the playbook compiler checks): one name
// per number, in the same order.
func TestSignalNames(t *testing.T) {
	names := wire.SignalNames()
	if len(names) != kernel.NumSignals-1 {
		t.Fatalf("%d signal names for the %d signals of enum priv_signal", len(names), kernel.NumSignals-1)
	}
	if !slices.Equal(names, filters.Signals) {
		t.Errorf("parser's signal names %v, filter schema's %v", names, filters.Signals)
	}
	for i, n := range names {
		if s, ok := wire.SignalByName(n); !ok || uint32(s) != uint32(i+1) || s.String() != n {
			t.Errorf("signal %q: %d %v", n, s, ok)
		}
	}
	if wire.SigModule != wire.Signal(kernel.NumSignals-1) {
		t.Errorf("SIG_MODULE %d is not the last signal (SIG_MAX %d)", wire.SigModule, kernel.NumSignals)
	}
}
