# botfactory — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help setup chromium run test test-unit test-integration test-security lint protos bench \
	bench-quick clean images k8s-validate test-chaos reliability-doc first-run-check

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[train,dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create or update .venv (nothing is installed outside the repo)

RUN_ARGS ?=
BOT ?=
run: setup ## Start the local stack for BOT (default the demo bots/banking; trains it on first run)
	$(PY) scripts/run_local.py $(if $(BOT),--bot $(BOT)) $(RUN_ARGS)

first-run-check: setup ## README's `make run` from an empty data folder, a first conversation, Ctrl-C
	$(PY) scripts/first_run_check.py

chromium: ## Install Debian's chromium for the browser tests if it is missing (needs root)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium (browser tests)"; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	    echo "warning: could not install chromium; the browser tests will fail"; \
	  else echo "warning: /usr/bin/chromium is missing (apt-get install chromium as root)"; fi; }

test: setup chromium ## Run the whole test suite (unit + integration)
	$(PY) -m pytest tests -q -ra

test-unit: setup ## Unit tests only (fast, no servers)
	$(PY) -m pytest tests/unit -q -ra

test-integration: setup chromium ## Integration tests (real nats-server and services on port 0)
	$(PY) -m pytest tests/integration -q -ra

test-security: setup ## Security checks: redaction, fuzzing, SSO, audit, abuse suite (docs/security.md)
	$(PY) -m pytest -q -ra tests/unit/test_security.py tests/unit/test_fuzzing.py \
		tests/unit/test_gateway_oidc.py tests/integration/test_privacy.py \
		tests/integration/test_audit.py tests/integration/test_abuse.py

test-chaos: setup ## Chaos tier: kill -9 + restart every component under load (minutes; not in make test)
	$(PY) -m pytest tests/chaos -m chaos -q -ra

reliability-doc: setup ## Re-render docs/reliability.md from benchmarks/results/*.json and the abuse tests
	$(PY) benchmarks/reliability_doc.py

lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services botfactory scripts benchmarks

protos: setup ## Regenerate services/common/pb from protos/ (commit the result)
	$(PY) scripts/gen_protos.py

BENCHMARKS := $(wildcard benchmarks/nlu_latency.py benchmarks/e2e_load.py benchmarks/rpa_throughput.py benchmarks/kb_search.py benchmarks/improvement_loop.py benchmarks/nlu_quality.py benchmarks/langid.py)
bench bench-quick: export BOTFACTORY_BENCH_IF_DATA = 1

bench: setup ## Run the benchmarks (results JSON under benchmarks/results/)
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-quick: setup ## The benchmarks' --quick variants (minutes; nlu_quality about 15)
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b --quick || exit 1; done

IMAGE_REGISTRY ?= botfactory
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES := gateway nlu dialogue rpa_runner trainer

images: ## Build the container images (deploy/docker/*.Dockerfile) where a Docker engine runs
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
		echo "make images: no Docker engine here (docker missing or its daemon unreachable);"; \
		echo "  nothing built. The Dockerfiles are linted by 'make k8s-validate' (hadolint)."; \
		exit 0; \
	fi; \
	for image in $(IMAGES); do \
		name=$$(echo $$image | tr _ -); \
		echo "== $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG)"; \
		DOCKER_BUILDKIT=1 docker build -f deploy/docker/$$image.Dockerfile \
			-t $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG) . || exit 1; \
	done

k8s-validate: setup ## Render + validate deploy/ (kustomize, kubernetes-validate, hadolint, rules)
	$(PY) -m pytest tests/unit/test_deploy.py tests/integration/test_deploy_nats.py -q -ra

clean: ## Remove local runtime data (.botfactory/) and caches
	rm -rf .botfactory .pytest_cache .mypy_cache .ruff_cache
