# imagejobs: `make run` to try it, `make test` to prove it. `make help` lists every target.
SHELL := /bin/bash
# Debian's own python3 where there is one: the Python of a stock machine and of the image
# (3.11.2), so the suite runs on what imagejobs runs on.
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
VENV := .venv
BIN := $(VENV)/bin
SPEC_DIR ?= ../shared/cycle-api-spec
PYTEST_ARGS ?=
FAULT_ARGS ?=
LOAD_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml deploy/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Install into .venv (only when pyproject.toml changed)

# The image's Python (Debian 12's python3, 3.11.2): dependencies chosen by markers such as
# redis's `python_full_version < "3.11.3"` must be those the image needs.
LOCK_PYTHON ?= /usr/bin/python3

lock: ## Pin every runtime dependency, transitive ones too, in deploy/constraints.txt (from a clean venv)
	rm -rf build/lock
	$(LOCK_PYTHON) -m venv build/lock
	build/lock/bin/pip install --quiet --upgrade pip
	build/lock/bin/pip install --quiet .
	{ echo "# The runtime dependencies of pyproject.toml, pinned: made by make lock, used by make image."; \
	  build/lock/bin/pip freeze --exclude imagejobs; } > deploy/constraints.txt
	rm -rf build/lock

services: ## Start Postgres, Redis, two Docker engines and two registries (idempotent)
	bash deploy/local-services.sh

# The services first: on a new machine they install python3-venv, which the venv needs.
run: ## Start the API on http://127.0.0.1:8000 and a worker
	bash deploy/local-services.sh --no-engine-b
	$(MAKE) --no-print-directory install
	$(BIN)/imagejobs db upgrade
	@echo
	@echo "imagejobs: API on http://127.0.0.1:8000 with one worker. In another shell, make a key:"
	@echo "  HUB=\$$($(BIN)/imagejobs hub create my-hub); echo \$$HUB"
	@echo "  KEY=\$$($(BIN)/imagejobs key create --hub \$$HUB)"
	@echo "  $(BIN)/imagejobs login --hub \$$HUB --key \"\$$KEY\""
	@echo "then use the client ($(BIN)/imagejobs build --help, import, jobs watch...), or call the API"
	@echo "with -H \"Authorization: Bearer \$$KEY\" -H \"X-Hub-Id: \$$HUB\" (README)."
	@echo
	IMAGEJOBS_ALLOWED_NETWORKS=$${IMAGEJOBS_ALLOWED_NETWORKS-127.0.0.1/32} $(BIN)/imagejobs dev

image: install services ## Build the container image imagejobs:latest (deploy/Dockerfile) on engine A
	bash deploy/build-image.sh

test: services install ## Run the whole test suite against the real services
	$(BIN)/pytest --ignore=tests/conformance $(PYTEST_ARGS)

# The fuzzers' pytest plugins take longer to load than the unit tests take to run; none uses them.
unit: install ## Run the unit tests alone (tests/unit: pure functions, no service needed, seconds)
	$(BIN)/pytest -p no:schemathesis -p no:hypothesispytest -p no:anyio tests/unit $(PYTEST_ARGS)

conformance: install ## Compare the API with the Cycle spec extract (SPEC_DIR)
	IMAGEJOBS_SPEC_DIR=$(SPEC_DIR) $(BIN)/pytest tests/conformance $(PYTEST_ARGS)

# The services first, with wrk for the HTTP rows. BENCH_ONLY=poll,jobs runs some rows only.
bench: ## Benchmarks (figures with same-run baselines; asserts nothing; BENCH_ONLY=poll,jobs)
	bash deploy/local-services.sh --bench
	$(MAKE) --no-print-directory install
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

.PHONY: help install lock services image run test unit conformance bench faults load fuzz lint clean
