# parry — two commands on a fresh machine: `make run` and `make test`.
GO       ?= go
export CGO_ENABLED ?= 0
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X parry.dev/parry/internal/buildinfo.Version=$(VERSION)

.PHONY: all build run test vet fmt-check unit e2e bench-broker playbooks-check cross-check fuzz

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/parry ./cmd/parry

run: build
	bin/parry run

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# Tests that need root, the kernel or the local servers run for real; under
# CI=true they fail instead of skipping when something is missing. One
# package at a time: the kernel tests each run a sensor, and every sensor
# sees every pod-shaped cgroup on the machine.
unit:
	$(GO) test -count=1 -p 1 ./...

# The end-to-end proof alone, with the latencies it measures.
e2e: tools
	$(GO) test -count=1 -v -run . ./tests/e2e/

# Everything: formatting, vet, generated BPF code up to date, every main
# building for both image architectures, the pinned servers built (cached),
# then every test; under CI=true, then the fuzzers.
test: fmt-check vet generate-check cross-check playbooks-check tools unit $(if $(filter true,$(CI)),fuzz)

# Every fuzz target (func Fuzz* in a tracked _test.go file) for FUZZTIME,
# one after another; `go test` alone runs only their seeds. A crasher is
# written to the package's testdata/fuzz/<target>/: commit it, and every
# `go test` replays it from then on. Six targets at 20 s: 2.5 minutes, plus
# about 7 to build them instrumented on a cold cache (2 cores).
FUZZTIME ?= 20s
fuzz:
	@targets=$$(git grep -n -e '^func Fuzz[A-Za-z0-9_]*(' -- '*_test.go' | sed 's|^\(.*\)/[^/]*_test\.go:[0-9]*:func \(Fuzz[A-Za-z0-9_]*\)(.*|./\1:\2|'); \
	[ -n "$$targets" ] || { echo "fuzz: no fuzz targets found"; exit 1; }; \
	for t in $$targets; do \
	  echo "fuzz: $${t##*:} in $${t%:*} for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$${t##*:}\$$" -fuzztime $(FUZZTIME) "$${t%:*}" || { echo "fuzz: $${t##*:} in $${t%:*} failed: the input is in $${t%:*}/testdata/fuzz/$${t##*:}/"; exit 1; }; \
	done

# ko.yaml builds every image for linux/amd64 and linux/arm64: every main
# package must build for both, without cgo (ko's default).
cross-check:
	@mains=$$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./...) || exit 1; \
	for arch in amd64 arm64; do \
	  GOOS=linux GOARCH=$$arch CGO_ENABLED=0 $(GO) build -o /dev/null $$mains || { echo "cross-check: the mains above do not build for linux/$$arch"; exit 1; }; \
	done; echo "cross-check: every main builds for linux/amd64 and linux/arm64"

# The compiled playbooks in config/ are what playbooks/ compiles to.
playbooks-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(GO) run ./cmd/parry playbook compile --out $$tmp playbooks/ >/dev/null && \
	for f in $$tmp/*; do cmp -s $$f config/$$(basename $$f) || { echo "config/$$(basename $$f) is stale: run 'go run ./cmd/parry playbook compile --out config/ playbooks/'"; exit 1; }; done && \
	for f in config/300-sensor-filters.yaml config/310-playbooks.yaml config/390-classify-baseline.yaml config/400-playbook-*.yaml config/450-event-policies.yaml; do [ -e $$tmp/$$(basename $$f) ] || { echo "$$f is no longer generated: remove it or recompile"; exit 1; }; done

# The embedded default's hot path: ingress → 50 Triggers → journal → handler.
bench-broker:
	$(GO) test -run '^$$' -bench IngressToHandler -benchtime 30000x -count 5 ./internal/broker/
	$(GO) test -run '^$$' -bench AppendComplete -benchtime 30000x -count 5 ./internal/journal/

# The local environment: make tools, devenv, devenv-down (tests/devenv).
include tools/tools.mk
# BPF code generation and the sensor benchmark (bpf/, sensor/).
include bpf/bpf.mk
