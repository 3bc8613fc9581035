package kernel

import "unsafe"

// The enums of bpf/parry.h, as bpf2go generated them (-type in gen.go):
// the one source of their values for the Go side. Package wire names the
// record kinds, signals and header flags from these.

// Record kinds (enum rec_kind); they index the counters, 0 is unused.
const (
	KindExec    = uint8(parryRecKindKIND_EXEC)
	KindExit    = uint8(parryRecKindKIND_EXIT)
	KindConnect = uint8(parryRecKindKIND_CONNECT)
	KindOpen    = uint8(parryRecKindKIND_OPEN)
	KindPriv    = uint8(parryRecKindKIND_PRIV)
	NumKinds    = int(parryRecKindKIND_MAX)
)

// Privilege and evasion signals (enum priv_signal); 0 is unused, and bit
// 1<<Sig* in Filter.Signals enables one.
const (
	SigSetuid    = uint32(parryPrivSignalSIG_SETUID)
	SigSetgid    = uint32(parryPrivSignalSIG_SETGID)
	SigPtrace    = uint32(parryPrivSignalSIG_PTRACE)
	SigMemfd     = uint32(parryPrivSignalSIG_MEMFD)
	SigExecMemfd = uint32(parryPrivSignalSIG_EXEC_MEMFD)
	SigUnshare   = uint32(parryPrivSignalSIG_UNSHARE)
	SigSetns     = uint32(parryPrivSignalSIG_SETNS)
	SigModule    = uint32(parryPrivSignalSIG_MODULE)
	NumSignals   = int(parryPrivSignalSIG_MAX)
)

// Record header flags (enum hdr_flag).
const (
	HdrTruncated = uint16(parryHdrFlagHDR_TRUNCATED)
	HdrBlocked   = uint16(parryHdrFlagHDR_BLOCKED)
	HdrFileless  = uint16(parryHdrFlagHDR_FILELESS)
)

// Filter flags (enum config_flag).
const (
	FlagExec       = uint32(parryConfigFlagCFG_EXEC)
	FlagExecAll    = uint32(parryConfigFlagCFG_EXEC_ALL)
	FlagExit       = uint32(parryConfigFlagCFG_EXIT)
	FlagConnect    = uint32(parryConfigFlagCFG_CONNECT)
	FlagConnectAll = uint32(parryConfigFlagCFG_CONNECT_ALL)
	FlagFiles      = uint32(parryConfigFlagCFG_FILES)
	FlagScope      = uint32(parryConfigFlagCFG_SCOPE)
	FlagCgroupV1   = uint32(parryConfigFlagCFG_CGROUP_V1)
	// flagBlocking is the kernel's own: set while the block list is not empty.
	flagBlocking = uint32(parryConfigFlagCFG_BLOCKING)
)

// Counter slots (enum counter_slot): kind*cntStride+slot in the counters map.
const (
	cntSeen    = uint32(parryCounterSlotCNT_SEEN)
	cntDropped = uint32(parryCounterSlotCNT_DROPPED)
	cntStride  = uint32(parryCounterSlotCNT_STRIDE)
)

// Sizes of the record layouts (struct *_rec), for the parser.
const (
	HeaderSize    = int(unsafe.Sizeof(parryRecHdr{}))
	ExecFixedSize = int(unsafe.Sizeof(parryExecRec{}))
	ExitSize      = int(unsafe.Sizeof(parryExitRec{}))
	ConnectSize   = int(unsafe.Sizeof(parryConnectRec{}))
	OpenFixedSize = int(unsafe.Sizeof(parryOpenRec{}))
	PrivSize      = int(unsafe.Sizeof(parryPrivRec{}))
)
