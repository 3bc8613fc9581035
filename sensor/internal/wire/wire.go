// Package wire decodes the records the BPF programs put in the ring buffer
// (layouts in bpf/parry.h). The kernel is trusted to write them, but a record
// is still checked field by field before use: a layout mismatch after a
// partial upgrade, or a bug, must become a counted "malformed" loss and never
// a panic or an out-of-bounds read.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"parry.dev/parry/sensor/internal/kernel"
)

// Version is the record layout version (RECORD_VERSION in bpf/parry.h).
const Version = 1

// Kind of a record (enum rec_kind).
type Kind uint8

// Record kinds. Their values, like those of the signals and header flags
// below, come from bpf/parry.h through the bpf2go bindings (package
// kernel): there is no second copy to keep in step.
const (
	KindExec    = Kind(kernel.KindExec)
	KindExit    = Kind(kernel.KindExit)
	KindConnect = Kind(kernel.KindConnect)
	KindOpen    = Kind(kernel.KindOpen)
	KindPriv    = Kind(kernel.KindPriv)
	// NumKinds bounds per-kind arrays (index 0 is unused).
	NumKinds = Kind(kernel.NumKinds)
)

func (k Kind) String() string {
	switch k {
	case KindExec:
		return "exec"
	case KindExit:
		return "exit"
	case KindConnect:
		return "connect"
	case KindOpen:
		return "open"
	case KindPriv:
		return "privilege"
	}
	return fmt.Sprintf("kind%d", uint8(k))
}

// Signal is a privilege or evasion signal (enum priv_signal).
type Signal uint32

// Signals.
const (
	SigSetuid    = Signal(kernel.SigSetuid)
	SigSetgid    = Signal(kernel.SigSetgid)
	SigPtrace    = Signal(kernel.SigPtrace)
	SigMemfd     = Signal(kernel.SigMemfd)
	SigExecMemfd = Signal(kernel.SigExecMemfd)
	SigUnshare   = Signal(kernel.SigUnshare)
	SigSetns     = Signal(kernel.SigSetns)
	SigModule    = Signal(kernel.SigModule)
)

// signalNames are indexed by Signal (the names are Go's: the C header
// numbers the signals only; a test holds the two to the same count).
var signalNames = [...]string{"", "setuid", "setgid", "ptrace", "memfd", "exec-memfd", "unshare", "setns", "module"}

// String is the signal's name as used in filters and events.
func (s Signal) String() string {
	if int(s) < len(signalNames) && s != 0 {
		return signalNames[s]
	}
	return fmt.Sprintf("signal%d", uint32(s))
}

// SignalByName is the inverse of String.
func SignalByName(name string) (Signal, bool) {
	for i, n := range signalNames {
		if n == name && i != 0 {
			return Signal(i), true
		}
	}
	return 0, false
}

// SignalNames lists the signal names in order.
func SignalNames() []string { return append([]string(nil), signalNames[1:]...) }

// Header flags (enum hdr_flag).
const (
	FlagTruncated = kernel.HdrTruncated
	FlagBlocked   = kernel.HdrBlocked
	FlagFileless  = kernel.HdrFileless
)

// Sizes of the layouts, as bpf2go generated them from bpf/parry.h. The
// offsets Parse reads at are written out; the kernel package's layout test
// holds them, and the length limits below, to the C structs.
const (
	HeaderSize    = kernel.HeaderSize
	ExecFixedSize = kernel.ExecFixedSize
	ExitSize      = kernel.ExitSize
	ConnectSize   = kernel.ConnectSize
	OpenFixedSize = kernel.OpenFixedSize
	PrivSize      = kernel.PrivSize
)

// Length limits (#defines in bpf/parry.h, which bpf2go cannot carry).
const (
	ExeMax        = 2047
	ArgsMax       = 1023
	CgroupNameMax = 127
	OpenPathMax   = 2047
)

// privNameOffset is where priv_rec.name starts.
const privNameOffset = 136

// Record is one decoded record. Fields not used by its Kind are zero.
type Record struct {
	Kind      Kind
	Flags     uint16
	Ktime     uint64 // CLOCK_BOOTTIME ns
	CgroupID  uint64
	MemcgID   uint64
	PID       uint32
	TID       uint32
	PPID      uint32
	UID       uint32
	EUID      uint32
	GID       uint32
	EGID      uint32
	Comm      string
	Truncated bool

	// exec
	Exe          string
	Args         []string
	CgroupLeaf   string // name of the task's cgroup directory
	CgroupParent string // name of its parent
	Fileless     bool

	// exit
	ExitCode   int32
	StartKtime uint64

	// connect
	Family  uint16
	DPort   uint16
	Proto   uint8
	DAddr   netip.Addr
	Blocked bool

	// open
	FileFlags uint32
	Path      string
	FD        int32

	// privilege
	Signal  Signal
	Syscall int32
	Ret     int64
	SysArgs [3]uint64
	OldUID  uint32
	OldEUID uint32
	OldGID  uint32
	OldEGID uint32
	Name    string
}

// ErrMalformed wraps every decoding failure.
var ErrMalformed = errors.New("malformed ring-buffer record")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Parser decodes records, interning the short strings that repeat (comm,
// exe, cgroup names) so that a steady stream allocates little. Not safe for
// concurrent use.
type Parser struct {
	intern map[string]string
	// argv repeats too (probes, health checks, storms): split once. The
	// cached slices are shared; callers must not modify Record.Args.
	args map[string]*argv
	// The previous value of each field: in a storm it repeats, and a
	// compare is cheaper than hashing into a table the storm keeps cold.
	last     [numFields]string
	lastArgs *argv
}

type argv struct {
	raw string // the record's bytes, NUL-separated
	a   []string
}

type field int

const (
	fieldComm field = iota
	fieldExe
	fieldCgroupLeaf
	fieldCgroupParent
	numFields
)

// maxInterned bounds the intern table; it is reset, not grown, beyond.
const maxInterned = 8192

func (p *Parser) str(f field, b []byte) string {
	if p == nil {
		return string(b)
	}
	if l := p.last[f]; l == string(b) { // no allocation for the compare
		return l
	}
	if s, ok := p.intern[string(b)]; ok { // nor for the lookup
		p.last[f] = s
		return s
	}
	if p.intern == nil || len(p.intern) >= maxInterned {
		p.intern = make(map[string]string, 256)
	}
	s := string(b)
	p.intern[s] = s
	p.last[f] = s
	return s
}

func (p *Parser) argv(b []byte) []string {
	if p != nil {
		if l := p.lastArgs; l != nil && l.raw == string(b) {
			return l.a
		}
		if e, ok := p.args[string(b)]; ok { // no allocation for the lookup
			p.lastArgs = e
			return e.a
		}
	}
	a := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if p != nil {
		if p.args == nil || len(p.args) >= maxInterned/2 {
			p.args = make(map[string]*argv, 256)
		}
		e := &argv{raw: string(b), a: a}
		p.args[e.raw] = e
		p.lastArgs = e
	}
	return a
}

var le = binary.LittleEndian

// cstr is b up to its first NUL.
func cstr(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// Parse decodes b into r (overwriting it). b is not retained.
func (p *Parser) Parse(b []byte, r *Record) error {
	*r = Record{}
	if len(b) < HeaderSize {
		return malformed("%d bytes, shorter than the %d-byte header", len(b), HeaderSize)
	}
	kind := Kind(b[0])
	if v := b[1]; v != Version {
		return malformed("layout version %d, this sensor reads version %d (BPF object and sensor binary out of step)", v, Version)
	}
	if size := le.Uint32(b[4:]); int(size) != len(b) {
		return malformed("%s record says %d bytes, ring buffer gave %d", kind, size, len(b))
	}
	r.Kind = kind
	r.Flags = le.Uint16(b[2:])
	r.Truncated = r.Flags&FlagTruncated != 0
	r.Ktime = le.Uint64(b[8:])
	r.CgroupID = le.Uint64(b[16:])
	r.MemcgID = le.Uint64(b[24:])
	r.PID = le.Uint32(b[32:])
	r.TID = le.Uint32(b[36:])
	r.PPID = le.Uint32(b[40:])
	r.UID = le.Uint32(b[44:])
	r.EUID = le.Uint32(b[48:])
	r.GID = le.Uint32(b[52:])
	r.EGID = le.Uint32(b[56:])
	r.Comm = p.str(fieldComm, cstr(b[64:80]))

	switch kind {
	case KindExec:
		return p.exec(b, r)
	case KindExit:
		if len(b) != ExitSize {
			return malformed("exit record of %d bytes, want %d", len(b), ExitSize)
		}
		r.ExitCode = int32(le.Uint32(b[80:]))
		r.StartKtime = le.Uint64(b[88:])
	case KindConnect:
		return connect(b, r)
	case KindOpen:
		if len(b) < OpenFixedSize {
			return malformed("open record of %d bytes, shorter than %d", len(b), OpenFixedSize)
		}
		r.FileFlags = le.Uint32(b[80:])
		n := int(le.Uint32(b[84:]))
		r.FD = int32(le.Uint32(b[88:]))
		if n > OpenPathMax || OpenFixedSize+n != len(b) {
			return malformed("open record: path of %d bytes in a %d-byte record", n, len(b))
		}
		r.Path = string(b[OpenFixedSize:])
	case KindPriv:
		if len(b) != PrivSize {
			return malformed("privilege record of %d bytes, want %d", len(b), PrivSize)
		}
		r.Signal = Signal(le.Uint32(b[80:]))
		if r.Signal == 0 || int(r.Signal) >= len(signalNames) {
			return malformed("privilege record with unknown signal %d", r.Signal)
		}
		r.Syscall = int32(le.Uint32(b[84:]))
		r.Ret = int64(le.Uint64(b[88:]))
		for i := range r.SysArgs {
			r.SysArgs[i] = le.Uint64(b[96+8*i:])
		}
		r.OldUID = le.Uint32(b[120:])
		r.OldEUID = le.Uint32(b[124:])
		r.OldGID = le.Uint32(b[128:])
		r.OldEGID = le.Uint32(b[132:])
		r.Name = string(cstr(b[privNameOffset:PrivSize]))
	default:
		return malformed("unknown record kind %d", uint8(kind))
	}
	return nil
}

func (p *Parser) exec(b []byte, r *Record) error {
	if len(b) < ExecFixedSize {
		return malformed("exec record of %d bytes, shorter than %d", len(b), ExecFixedSize)
	}
	exeLen := int(le.Uint32(b[80:]))
	argsLen := int(le.Uint32(b[84:]))
	cgLen := int(le.Uint32(b[88:]))
	if exeLen > ExeMax || argsLen > ArgsMax || cgLen > 2*(CgroupNameMax+1) ||
		ExecFixedSize+exeLen+argsLen+cgLen != len(b) {
		return malformed("exec record: exe %d + args %d + cgroup %d bytes do not fit its %d bytes", exeLen, argsLen, cgLen, len(b))
	}
	data := b[ExecFixedSize:]
	r.Exe = p.str(fieldExe, data[:exeLen])
	if args := data[exeLen : exeLen+argsLen]; len(args) > 0 {
		r.Args = p.argv(args)
	}
	cg := data[exeLen+argsLen:]
	leaf := cstr(cg)
	r.CgroupLeaf = p.str(fieldCgroupLeaf, leaf)
	if len(leaf) < len(cg) {
		r.CgroupParent = p.str(fieldCgroupParent, cstr(cg[len(leaf)+1:]))
	}
	r.Fileless = r.Flags&FlagFileless != 0
	return nil
}

func connect(b []byte, r *Record) error {
	if len(b) != ConnectSize {
		return malformed("connect record of %d bytes, want %d", len(b), ConnectSize)
	}
	r.Family = le.Uint16(b[80:])
	r.DPort = le.Uint16(b[82:])
	r.Proto = b[84]
	r.Blocked = r.Flags&FlagBlocked != 0
	switch r.Family {
	case 2: // AF_INET
		r.DAddr = netip.AddrFrom4([4]byte(b[88:92]))
	case 10: // AF_INET6
		r.DAddr = netip.AddrFrom16([16]byte(b[88:104]))
	default:
		return malformed("connect record with address family %d", r.Family)
	}
	return nil
}

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return fmt.Sprintf("ip%d", p)
}
