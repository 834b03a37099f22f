# VixenBliss developer commands. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := services,gpu,s3local,modal,test
# On CPU machines the CPU build of torch lies in /opt/wheels; pip finds it there when asked for torch==2.13.0.
FIND_LINKS := $(shell [ -d /opt/wheels ] && echo --find-links /opt/wheels)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install test lint typecheck unit demo up down playground bench bench-tiny bench-platform bench-streams bench-worker-modes smoke tiny-model clean schemas api-fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(FIND_LINKS) "torch==2.13.0"
	$(BIN)/pip install -q $(FIND_LINKS) -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The whole suite: lint, types, then unit, integration, fault, e2e and the tiny benchmark test.
test: install
	scripts/ensure-services.sh
	scripts/ensure-browser.sh
	scripts/ensure-promtool.sh
	scripts/ensure-node-tools.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q tests/unit

# schemathesis over content's and identity's committed OpenAPI documents, --checks all, 100 examples per operation,
# seeds 1, 2 and 3 (about 4 min on 2 cores), each service in-process on fresh databases, queues and a bucket; fails on
# any failure. `make test` runs the same tests with one seed and 10 examples.
api-fuzz: install
	scripts/ensure-services.sh
	API_FUZZ_SEEDS=1,2,3 API_FUZZ_MAX_EXAMPLES=100 $(BIN)/pytest -q -p no:cacheprovider -s \
		tests/integration/content/test_fuzzed_api.py::test_content_answers_every_generated_request_as_documented \
		tests/integration/identity/test_fuzzed_api.py

# One generation through the whole local stack; stops everything it started.
demo: install
	$(BIN)/python scripts/stack.py demo

up: install
	$(BIN)/python scripts/stack.py up

# On the stack `make up` started: a token for SUB (default playground-user) and an avatar of theirs with a ready LoRA.
playground: install
	$(BIN)/python scripts/stack.py playground --sub $(or $(SUB),playground-user)

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/stack.py down; else echo "nothing to stop"; fi

# Regenerate what is generated from code and committed (a test fails when any drifts): docs/schemas,
# docs/asyncapi.yaml, docs/openapi/, and the LoRA layer tables of contracts/lora_targets/.
schemas: install
	$(BIN)/python -m contracts.export
	$(BIN)/python -m services.identity openapi
	$(BIN)/python -m services.content openapi
	$(BIN)/python -m gpu.tools.lora_targets

tiny-model: install
	$(BIN)/python -m gpu.tiny model --out .cache/tiny-sdxl

bench: install
	$(BIN)/python -m gpu.bench

bench-tiny: install
	$(BIN)/python -m gpu.bench --tiny

# The platform's own cost per generation (echo worker, SQLite and PostgreSQL, ~8 min); rewrites its docs section.
bench-platform: install
	$(BIN)/python -m tests.bench.platform --write-docs docs/benchmarks.md

# 5,000 event streams on one generation (content, PostgreSQL, RabbitMQ; ~2 min); rewrites its docs section.
bench-streams: install
	$(BIN)/python -m tests.bench.streams --write-docs docs/benchmarks.md

# Async against sync mode on the local worker, echo and tiny engines (~4 min on 2 cores); rewrites its docs section.
bench-worker-modes: install
	$(BIN)/python -m tests.bench.worker_modes --write-docs docs/benchmarks.md

# Each hop (docs/deploy.md § Smoke test): of the stack `make up` started, nothing to set; of a deployment when
# SMOKE_CONTENT_URL and the services' variables name it.
smoke: install
	$(BIN)/python scripts/stack.py smoke

clean:
	rm -rf .run out .cache .pytest_cache .mypy_cache .ruff_cache
