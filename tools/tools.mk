# Targets of the local environment (issue 4); included by the top Makefile.
#
#   make tools        build etcd, kube-*, kwok and vault from pinned sources into
#                     bin/ (cached outside the repo: seconds when up to date)
#   make devenv       build if needed, then start the environment in the
#                     background; prints where .devenv/kubeconfig and .devenv/env are
#   make devenv-down  stop it (also cleans a .devenv left by a crashed run)
#   make devenv-status

.PHONY: tools devenv devenv-down devenv-status

DEVENV_BIN := bin/devenv

tools:
	@bash tools/build.sh

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
