package wire

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// hdr builds a header the way fill_hdr in bpf/sensor.bpf.c does.
func hdr(kind Kind, size int) []byte {
	b := make([]byte, size)
	b[0] = byte(kind)
	b[1] = Version
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	binary.LittleEndian.PutUint64(b[8:], 123456789)
	binary.LittleEndian.PutUint64(b[16:], 4242)
	binary.LittleEndian.PutUint32(b[32:], 100)
	binary.LittleEndian.PutUint32(b[36:], 101)
	binary.LittleEndian.PutUint32(b[40:], 1)
	binary.LittleEndian.PutUint32(b[44:], 1000)
	binary.LittleEndian.PutUint32(b[48:], 0)
	copy(b[64:], "bash\x00")
	return b
}

func execRecord(exe, args, cg string) []byte {
	b := hdr(KindExec, ExecFixedSize+len(exe)+len(args)+len(cg))
	binary.LittleEndian.PutUint32(b[80:], uint32(len(exe)))
	binary.LittleEndian.PutUint32(b[84:], uint32(len(args)))
	binary.LittleEndian.PutUint32(b[88:], uint32(len(cg)))
	copy(b[ExecFixedSize:], exe+args+cg)
	return b
}

func TestParseExec(t *testing.T) {
	var p Parser
	var r Record
	b := execRecord("/usr/bin/curl", "curl\x00-s\x00http://x\x00", "cri-containerd-abc.scope\x00kubepods-pod1.slice\x00")
	if err := p.Parse(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindExec || r.Exe != "/usr/bin/curl" || r.Comm != "bash" || r.PID != 100 || r.PPID != 1 || r.UID != 1000 || r.CgroupID != 4242 {
		t.Fatalf("header/exe wrong: %+v", r)
	}
	if !slices.Equal(r.Args, []string{"curl", "-s", "http://x"}) {
		t.Fatalf("args %q", r.Args)
	}
	if r.CgroupLeaf != "cri-containerd-abc.scope" || r.CgroupParent != "kubepods-pod1.slice" {
		t.Fatalf("cgroup names %q %q", r.CgroupLeaf, r.CgroupParent)
	}
}

func TestParseConnect(t *testing.T) {
	b := hdr(KindConnect, ConnectSize)
	binary.LittleEndian.PutUint16(b[80:], 2)
	binary.LittleEndian.PutUint16(b[82:], 8080)
	b[84] = 6
	copy(b[88:], []byte{127, 0, 0, 1})
	var r Record
	if err := (&Parser{}).Parse(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.DPort != 8080 || r.DAddr != netip.MustParseAddr("127.0.0.1") || ProtoName(r.Proto) != "tcp" {
		t.Fatalf("%+v", r)
	}
	binary.LittleEndian.PutUint16(b[80:], 10)
	copy(b[88:], netip.MustParseAddr("::1").AsSlice())
	if err := (&Parser{}).Parse(b, &r); err != nil || r.DAddr != netip.MustParseAddr("::1") {
		t.Fatalf("v6: %v %v", err, r.DAddr)
	}
}

func TestParseOpenExitPriv(t *testing.T) {
	path := "/etc/shadow"
	b := hdr(KindOpen, OpenFixedSize+len(path))
	binary.LittleEndian.PutUint32(b[84:], uint32(len(path)))
	binary.LittleEndian.PutUint32(b[88:], 3)
	copy(b[OpenFixedSize:], path)
	var r Record
	if err := (&Parser{}).Parse(b, &r); err != nil || r.Path != path || r.FD != 3 {
		t.Fatalf("open: %v %+v", err, r)
	}

	b = hdr(KindExit, ExitSize)
	binary.LittleEndian.PutUint32(b[80:], 256)
	if err := (&Parser{}).Parse(b, &r); err != nil || r.ExitCode != 256 {
		t.Fatalf("exit: %v %+v", err, r)
	}

	b = hdr(KindPriv, PrivSize)
	binary.LittleEndian.PutUint32(b[80:], uint32(SigMemfd))
	binary.LittleEndian.PutUint32(b[84:], 319)
	copy(b[privNameOffset:], "payload\x00")
	if err := (&Parser{}).Parse(b, &r); err != nil || r.Signal != SigMemfd || r.Name != "payload" || r.Syscall != 319 {
		t.Fatalf("priv: %v %+v", err, r)
	}
}

func TestParseMalformed(t *testing.T) {
	good := execRecord("/bin/true", "true\x00", "x\x00")
	cases := map[string][]byte{
		"empty":          nil,
		"short header":   good[:40],
		"size mismatch":  good[:len(good)-1],
		"unknown kind":   func() []byte { b := hdr(9, HeaderSize); return b }(),
		"bad version":    func() []byte { b := slices.Clone(good); b[1] = 7; return b }(),
		"exe overflows":  func() []byte { b := slices.Clone(good); binary.LittleEndian.PutUint32(b[80:], 1<<31); return b }(),
		"args too long":  func() []byte { b := slices.Clone(good); binary.LittleEndian.PutUint32(b[84:], ArgsMax+1); return b }(),
		"connect short":  hdr(KindConnect, ConnectSize-8),
		"bad family":     hdr(KindConnect, ConnectSize),
		"priv no signal": hdr(KindPriv, PrivSize),
		"open path long": func() []byte { b := hdr(KindOpen, OpenFixedSize); binary.LittleEndian.PutUint32(b[84:], 5); return b }(),
	}
	for name, b := range cases {
		var r Record
		if err := (&Parser{}).Parse(b, &r); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestInternBounded(t *testing.T) {
	var p Parser
	for i := range maxInterned * 3 {
		p.str(fieldExe, []byte{byte(i), byte(i >> 8), byte(i >> 16)})
	}
	if len(p.intern) > maxInterned {
		t.Fatalf("intern table grew to %d", len(p.intern))
	}
}

// TestInternRemembersLastValue: the per-field memory of the previous value
// returns it only while the bytes repeat.
func TestInternRemembersLastValue(t *testing.T) {
	var p Parser
	for _, v := range []string{"/bin/sh", "/bin/sh", "/usr/bin/true", "/bin/sh", "", "/bin/sh"} {
		if got := p.str(fieldExe, []byte(v)); got != v {
			t.Fatalf("str(%q) = %q", v, got)
		}
	}
	for _, v := range []string{"sh\x00-c\x00", "sh\x00-c\x00", "true\x00", "sh\x00-c\x00"} {
		got := p.argv([]byte(v))
		if want := strings.Split(strings.TrimRight(v, "\x00"), "\x00"); !slices.Equal(got, want) {
			t.Fatalf("argv(%q) = %q, want %q", v, got, want)
		}
	}
}

func BenchmarkParseConnect(b *testing.B) {
	rec := hdr(KindConnect, ConnectSize)
	binary.LittleEndian.PutUint16(rec[80:], 2)
	var p Parser
	var r Record
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Parse(rec, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseExec(b *testing.B) {
	rec := execRecord("/usr/bin/true", "true\x00--version\x00", "cri-containerd-abc.scope\x00kubepods-pod1.slice\x00")
	var p Parser
	var r Record
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Parse(rec, &r); err != nil {
			b.Fatal(err)
		}
	}
}
