package kernel

// The BPF object is compiled from bpf/sensor.bpf.c by Debian's clang-19 and
// committed with its Go bindings, so a plain go build needs no clang. Run
// `make generate` (bpf/bpf.mk) after changing anything under bpf/. One
// object per architecture the images are built for (ko.yaml): x86 for
// amd64, arm64 (__TARGET_ARCH_arm64); the programs use no pt_regs and no
// syscall numbers of their own, so both compile from the same source.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -target amd64,arm64 -type rec_hdr -type rec_kind -type counter_slot -type priv_signal -type config_flag -type hdr_flag -type exec_rec -type exit_rec -type connect_rec -type open_rec -type priv_rec -type sensor_config -type trie_key -type trie_val -type exe_key parry ../../../bpf/sensor.bpf.c -- -I../../../bpf/include -I../../../bpf -mcpu=v3 -Wall -Werror
