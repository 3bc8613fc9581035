# parry — two commands on a fresh machine: `make run` and `make test`.
GO       ?= go
export CGO_ENABLED ?= 0
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X parry.dev/parry/internal/buildinfo.Version=$(VERSION)

.PHONY: all build run test vet fmt-check unit

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/parry ./cmd/parry

run: build
	bin/parry run

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

unit:
	$(GO) test ./...

test: fmt-check vet unit

# The local environment (issue 4) adds its targets here.
-include tools/tools.mk
