# imagejobs: `make run` to try it, `make test` to prove it. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC_DIR ?= ../shared/cycle-api-spec
PYTEST_ARGS ?=
FAULT_ARGS ?=
LOAD_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Install into .venv (only when pyproject.toml changed)

services: ## Start Postgres, Redis, two Docker engines and two registries (idempotent)
	bash deploy/local-services.sh

run: install ## Start the API on http://127.0.0.1:8000 and a worker
	bash deploy/local-services.sh --no-engine-b
	$(BIN)/imagejobs db upgrade
	@echo
	@echo "imagejobs: API on http://127.0.0.1:8000 with one worker. In another shell, make a key:"
	@echo "  HUB=\$$($(BIN)/imagejobs hub create my-hub); echo \$$HUB"
	@echo "  $(BIN)/imagejobs key create --hub \$$HUB"
	@echo "then call the API with -H \"Authorization: Bearer <key>\" -H \"X-Hub-Id: \$$HUB\" (README)."
	@echo
	IMAGEJOBS_ALLOWED_NETWORKS=$${IMAGEJOBS_ALLOWED_NETWORKS-127.0.0.1/32} $(BIN)/imagejobs dev

test: install services ## Run the whole test suite against the real services
	$(BIN)/pytest --ignore=tests/conformance $(PYTEST_ARGS)

conformance: install ## Compare the API with the Cycle spec extract (SPEC_DIR)
	IMAGEJOBS_SPEC_DIR=$(SPEC_DIR) $(BIN)/pytest tests/conformance $(PYTEST_ARGS)

bench: install services ## Benchmarks (figures with same-run baselines; asserts nothing)
	$(BIN)/python -m tests.benchmarks.bench_builds

faults: install services ## Fault injection on its own Redis/Postgres: workers killed, Redis/Postgres restarted, broker cut (FAULT_ARGS="--seed 7 --jobs 40")
	$(BIN)/python -m tests.faults.run $(FAULT_ARGS)

load: install services ## A few hundred clients creating and polling jobs at once (LOAD_ARGS="--clients 300 --seconds 60")
	$(BIN)/python -m tests.faults.crowd $(LOAD_ARGS)

fuzz: install services ## Fuzz the API from its own OpenAPI document, longer than make test does (FUZZ_EXAMPLES=200 FUZZ_SEED=7)
	IMAGEJOBS_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),200) IMAGEJOBS_FUZZ_SEED=$(or $(FUZZ_SEED),random) \
		$(BIN)/pytest tests/test_fuzz.py $(PYTEST_ARGS)

lint: install ## ruff
	$(BIN)/ruff check app workers tests

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .test-logs *.egg-info

.PHONY: help install services run test conformance bench faults load fuzz lint clean
