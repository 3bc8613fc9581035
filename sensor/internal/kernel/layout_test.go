package kernel

import (
	"testing"
	"unsafe"

	"parry.dev/parry/sensor/internal/wire"
)

// TestLayoutMatchesParser ties the Go parser's offsets to the C structs as
// bpf2go generated them: a change to bpf/parry.h without the parser fails here.
func TestLayoutMatchesParser(t *testing.T) {
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"rec_hdr", unsafe.Sizeof(parryRecHdr{}), wire.HeaderSize},
		{"rec_hdr.comm", unsafe.Offsetof(parryRecHdr{}.Comm), 64},
		{"rec_hdr.cgroup_id", unsafe.Offsetof(parryRecHdr{}.CgroupId), 16},
		{"rec_hdr.egid", unsafe.Offsetof(parryRecHdr{}.Egid), 56},
		{"exec_rec", unsafe.Sizeof(parryExecRec{}), wire.ExecFixedSize},
		{"exec_rec.cg_len", unsafe.Offsetof(parryExecRec{}.CgLen), 88},
		{"exit_rec", unsafe.Sizeof(parryExitRec{}), wire.ExitSize},
		{"exit_rec.start_ktime", unsafe.Offsetof(parryExitRec{}.StartKtime), 88},
		{"connect_rec", unsafe.Sizeof(parryConnectRec{}), wire.ConnectSize},
		{"connect_rec.daddr", unsafe.Offsetof(parryConnectRec{}.Daddr), 88},
		{"connect_rec.proto", unsafe.Offsetof(parryConnectRec{}.Proto), 84},
		{"open_rec", unsafe.Sizeof(parryOpenRec{}), wire.OpenFixedSize},
		{"open_rec.fd", unsafe.Offsetof(parryOpenRec{}.Fd), 88},
		{"priv_rec", unsafe.Sizeof(parryPrivRec{}), wire.PrivSize},
		{"priv_rec.ret", unsafe.Offsetof(parryPrivRec{}.Ret), 88},
		{"priv_rec.old_uid", unsafe.Offsetof(parryPrivRec{}.OldUid), 120},
		{"priv_rec.name", unsafe.Offsetof(parryPrivRec{}.Name), 136},
		{"trie_key.name", unsafe.Sizeof(parryTrieKey{}.Name), TrieNameMax},
		{"exe_key.name", unsafe.Sizeof(parryExeKey{}.Name), ExeNameMax},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: C layout says %d, Go parser uses %d", c.name, c.got, c.want)
		}
	}
}
