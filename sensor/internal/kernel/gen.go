package kernel

// The BPF object is compiled from bpf/sensor.bpf.c by Debian's clang-19 and
// committed with its Go bindings, so a plain go build needs no clang. Run
// `make generate` (bpf/bpf.mk) after changing anything under bpf/.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -target amd64 -type rec_hdr -type exec_rec -type exit_rec -type connect_rec -type open_rec -type priv_rec -type sensor_config -type trie_key -type trie_val -type exe_key parry ../../../bpf/sensor.bpf.c -- -I../../../bpf/include -I../../../bpf -mcpu=v3 -Wall -Werror
