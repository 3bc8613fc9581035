# BPF objects for the sensor (issue 5). Included from the top Makefile:
#   -include bpf/bpf.mk
# The compiled object and its Go bindings are committed under
# sensor/internal/kernel, so `go build` never needs clang; these targets are
# for changing bpf/ and for proving the committed files match their source.

GO          ?= go
BPF_CLANG   ?= clang-19
BPF_STRIP   ?= llvm-strip-19
BPF_GEN_DIR := sensor/internal/kernel
# One object per architecture ko.yaml builds (linux/amd64 and linux/arm64).
BPF_OUTPUTS := $(BPF_GEN_DIR)/parry_x86_bpfel.go $(BPF_GEN_DIR)/parry_x86_bpfel.o \
               $(BPF_GEN_DIR)/parry_arm64_bpfel.go $(BPF_GEN_DIR)/parry_arm64_bpfel.o

.PHONY: generate generate-check bpf-tools vmlinux bench-sensor

bpf-tools:
	@command -v $(BPF_CLANG) >/dev/null && command -v $(BPF_STRIP) >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ] || { \
	  echo "bpf: $(BPF_CLANG), $(BPF_STRIP) and libbpf headers are needed to compile bpf/: apt-get install clang-19 llvm-19 libbpf-dev"; exit 1; }

# Regenerate the BPF object and its Go bindings with the pinned bpf2go
# (the tool directive in go.mod, same version as github.com/cilium/ebpf).
generate: bpf-tools
	cd $(BPF_GEN_DIR) && $(GO) generate ./...

# Regenerate in a scratch copy of the tree and fail if the committed outputs
# differ: bpf2go maps source paths to relative ones, so the bytes depend only
# on the sources and the compiler.
generate-check: bpf-tools
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/$(BPF_GEN_DIR)" && \
	cp go.mod go.sum "$$tmp/" && cp -r bpf "$$tmp/" && \
	cp $(BPF_GEN_DIR)/gen.go "$$tmp/$(BPF_GEN_DIR)/" && \
	(cd "$$tmp/$(BPF_GEN_DIR)" && $(GO) generate ./... ) && \
	for f in $(BPF_OUTPUTS); do \
	  cmp -s "$$f" "$$tmp/$$f" || { echo "generate-check: $$f differs from what bpf/ compiles to; run make generate and commit"; exit 1; }; \
	done && echo "generate-check: BPF outputs match their sources"

# vmlinux.h is generated once from a kernel's BTF and committed (CO-RE makes
# the programs portable across kernels); regenerate only to use newer types.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/include/vmlinux.h

# Userspace CPU per event, drops, RSS and build overhead, side by side with
# bpftrace (see sensor/bench): first the Go benchmarks of the record path,
# then the load generator against the real kernel. Needs root, bpftrace
# (apt-get install bpftrace) and about ten minutes; BENCH_FLAGS=-skip-build
# leaves out the build-overhead runs.
bench-sensor:
	$(GO) test -run '^$$' -bench . -benchmem ./sensor/ ./sensor/internal/wire
	$(GO) run ./sensor/bench $(BENCH_FLAGS)
