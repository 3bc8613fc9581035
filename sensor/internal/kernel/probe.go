package kernel

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// probeOptional tries the hook types the sensor could use but does not need
// (fentry, BPF-LSM, kprobes), so the start-up log says which ones this kernel
// allows and why the others are not used. Each probe loads a two-instruction
// program and attaches it for a moment to a function every kernel has.
func probeOptional() []HookStatus {
	ret0 := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	try := func(name, kind string, spec *ebpf.ProgramSpec, attach func(*ebpf.Program) (link.Link, error)) HookStatus {
		st := HookStatus{Name: name, Kind: kind, Optional: true}
		p, err := ebpf.NewProgram(spec)
		if err != nil {
			st.Reason = "does not load here: " + shortErr(err) + "; the tracepoint hooks cover it"
			return st
		}
		defer p.Close()
		l, err := attach(p)
		if err != nil {
			st.Reason = "does not attach here: " + shortErr(err) + "; the tracepoint hooks cover it"
			return st
		}
		l.Close()
		st.Active = true
		st.Reason = "available; not used by this version (the tracepoint hooks cover it)"
		return st
	}
	return []HookStatus{
		try("probe.fentry", "fentry", &ebpf.ProgramSpec{
			Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "security_file_open",
			Instructions: ret0, License: "GPL",
		}, func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }),
		try("probe.lsm", "lsm", &ebpf.ProgramSpec{
			Type: ebpf.LSM, AttachType: ebpf.AttachLSMMac, AttachTo: "file_open",
			Instructions: ret0, License: "GPL",
		}, func(p *ebpf.Program) (link.Link, error) { return link.AttachLSM(link.LSMOptions{Program: p}) }),
		try("probe.kprobe", "kprobe", &ebpf.ProgramSpec{
			Type: ebpf.Kprobe, Instructions: ret0, License: "GPL",
		}, func(p *ebpf.Program) (link.Link, error) { return link.Kprobe("security_file_open", p, nil) }),
	}
}

func shortErr(err error) string {
	if errors.Is(err, os.ErrPermission) {
		// cilium/ebpf adds a MEMLOCK hint to EPERM; on these kernels the
		// cause is the program type itself (no BPF trampolines, no BPF LSM).
		return "the kernel refuses this program type (EPERM)"
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return "verifier: " + lastLines(ve, 1)
	}
	return err.Error()
}

// Probe says whether this process can load the sensor: BTF present (or
// given), and the privilege to create BPF maps and programs.
func Probe(btfPath string) error {
	if btfPath == "" {
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
			return fmt.Errorf("this kernel exposes no BTF (/sys/kernel/btf/vmlinux: %v): the sensor's CO-RE programs need it; use a kernel with CONFIG_DEBUG_INFO_BTF=y or give --btf a vmlinux BTF file", err)
		}
	} else if _, err := os.Stat(btfPath); err != nil {
		return fmt.Errorf("--btf %s: %w", btfPath, err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: uint32(os.Getpagesize())})
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("not privileged to load BPF (%v): run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (privileged: true in the DaemonSet)", err)
		}
		return fmt.Errorf("cannot create a BPF ring buffer (%v): the sensor needs Linux 5.17 or newer (bpf_loop for path walks, bpf_timer for batched wake-ups) with BPF enabled", err)
	}
	m.Close()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("not privileged to load tracing BPF programs (%v): grant CAP_PERFMON and CAP_BPF, or run as root", err)
		}
		return fmt.Errorf("cannot load a tracepoint BPF program (%v)", err)
	}
	p.Close()
	return nil
}
