# botfactory — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help setup run test test-unit test-integration lint protos bench bench-quick clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[train,dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create or update .venv (nothing is installed outside the repo)

run: setup ## Start the local stack (nats-server + services; trains the demo bot on first run)
	$(PY) scripts/run_local.py

test: setup ## Run the whole test suite (unit + integration)
	$(PY) -m pytest tests -q -ra

test-unit: setup ## Unit tests only (fast, no servers)
	$(PY) -m pytest tests/unit -q -ra

test-integration: setup ## Integration tests (real nats-server and services on port 0)
	$(PY) -m pytest tests/integration -q -ra

lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services botfactory scripts benchmarks

protos: setup ## Regenerate services/common/pb from protos/ (commit the result)
	$(PY) scripts/gen_protos.py

BENCHMARKS := $(wildcard benchmarks/nlu_latency.py benchmarks/e2e_load.py benchmarks/rpa_throughput.py)

bench: setup ## Run the benchmarks (results JSON under benchmarks/results/)
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-quick: setup ## The benchmarks' --quick variants (under a minute each)
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean: ## Remove local runtime data (.botfactory/) and caches
	rm -rf .botfactory .pytest_cache .mypy_cache .ruff_cache
