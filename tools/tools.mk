# Targets of the local environment (issue 4); included by the top Makefile.
#
#   make tools        build etcd, kube-*, kwok and vault from pinned sources into
#                     bin/ (cached outside the repo: seconds when up to date)
#   make tools-s3     build SeaweedFS's weed (opt-in: the S3 evidence store's
#                     tests; long cold, so not part of make tools unless
#                     PARRY_S3=required, which also makes those tests required)
#   make devenv       build if needed, then start the environment in the
#                     background; prints where .devenv/kubeconfig and .devenv/env are
#   make devenv-down  stop it (also cleans a .devenv left by a crashed run)
#   make devenv-status
#
# The real single-node cluster (issue 21; needs root):
#
#   make cluster-tools  build kubelet, kube-proxy, crane, ko, CoreDNS and
#                       Knative Eventing from pinned sources (cached)
#   make cluster        a real node (containerd, kubelet, kube-proxy, CoreDNS,
#                       a local registry) with Knative Eventing in .devenv,
#                       left running; prints the kubeconfig
#   make cluster-down   stop it and restore the host (same as devenv-down)
#   make cluster-test   the real-node tests (go test -tags realnode)

.PHONY: tools tools-s3 devenv devenv-down devenv-status cluster-tools cluster cluster-down cluster-test

DEVENV_BIN := bin/devenv

tools:
	@bash tools/build.sh
	@if [ "$${PARRY_S3:-}" = required ]; then bash tools/build.sh seaweedfs; fi

tools-s3:
	@bash tools/build.sh seaweedfs

$(DEVENV_BIN): FORCE_DEVENV
	@$(GO) build -o $(DEVENV_BIN) ./tests/devenv/cmd/devenv

.PHONY: FORCE_DEVENV
FORCE_DEVENV:

devenv: tools $(DEVENV_BIN)
	@$(DEVENV_BIN) up

devenv-down: $(DEVENV_BIN)
	@$(DEVENV_BIN) down

devenv-status: $(DEVENV_BIN)
	@$(DEVENV_BIN) status

cluster-tools:
	@bash tools/build.sh cluster

cluster: cluster-tools $(DEVENV_BIN)
	@$(DEVENV_BIN) up -cluster

cluster-down: devenv-down

cluster-test: cluster-tools
	$(GO) test -tags realnode -count=1 -p 1 -v -run 'RealNode' ./tests/devenv/
