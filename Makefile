# VixenBliss developer commands. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package comes from uv.lock through requirements/dev.txt, hash-checked (docs/deploy.md § Locked dependencies);
# the extras it holds are scripts/lock.py's DEV_EXTRAS. torch is its CPU build, pinned by hash: on this machine kind
# the wheel lies in /opt/wheels; elsewhere PyTorch's CPU index lists it (a page this machine cannot reach).
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/*.whl),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
LOCKED := pyproject.toml uv.lock requirements/tools.txt requirements/dev.txt
STAMP := $(VENV)/.installed-$(shell cat $(LOCKED) | sha256sum | cut -c1-12)

.PHONY: install lock test lint typecheck unit demo up down playground bench bench-tiny bench-swap bench-soak bench-platform bench-streams bench-worker-modes smoke tiny-model clean schemas k8s-check api-fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)

# pip and uv at the lock's versions, by hash, with the pip the venv came with.
$(BIN)/uv: requirements/tools.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/tools.txt
	touch $@

# A lock that no longer matches pyproject.toml stops here, naming `make lock`. `uv pip sync` makes the venv exactly
# the file (and removes what it does not list); the project itself goes in editable, built by the locked setuptools.
$(STAMP): $(LOCKED) | $(BIN)/uv
	$(BIN)/python -m scripts.lock check
	$(BIN)/uv pip sync -q --python $(BIN)/python --require-hashes --find-links $(TORCH_WHEELS) requirements/dev.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# Re-resolve after a change to pyproject.toml's dependencies and write uv.lock and requirements/*.txt; every pin that
# still fits is kept. LOCK_ARGS goes to `uv lock`: --upgrade, or --upgrade-package NAME.
lock: | $(BIN)/uv
	$(BIN)/python -m scripts.lock write $(LOCK_ARGS)

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

# The cached swap alone, today's fuser beside the one before issue 25: the tiny UNet (fp32) and the full-size SDXL UNet
# (bf16, random weights; ~5 GiB, ~3 min on 2 cores) on the CPU, and the full size on meta (ops dispatched); rewrites
# their docs sections.
bench-swap: install
	$(BIN)/python -m gpu.bench.swap --model tiny --device cpu --dtype float32 --lora-mib 0.25 --runs 30 --write-docs docs/benchmarks.md
	$(BIN)/python -m gpu.bench.swap --model full --device cpu --dtype bfloat16 --runs 10 --write-docs docs/benchmarks.md
	$(BIN)/python -m gpu.bench.swap --model full --device meta --dtype float16 --runs 10 --write-docs docs/benchmarks.md

# Memory over 1,000 requests alternating over 5 LoRAs on the tiny model (RSS growth ≤ 1 % after warm-up; on a GPU,
# allocated bytes equal before and after 100 swaps); rewrites its docs section.
bench-soak: install
	$(BIN)/python -m gpu.bench.soak --write-docs docs/benchmarks.md

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

# The Kubernetes manifests as a cluster gets them (docs/deploy.md § Checking the manifests): the production overlay
# rendered, validated strictly against the Kubernetes schemas, and checked by checkov (installed on first use into
# its own virtual environment: it is large, and not a project dependency).
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .cache/venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
K8S_RENDERED := .run/k8s/production.yaml

$(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION):
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q "checkov==$(CHECKOV_VERSION)"
	rm -f $(CHECKOV_VENV)/.checkov-* && touch $@

k8s-check: install $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)
	mkdir -p $(dir $(K8S_RENDERED))
	kubectl kustomize deploy/k8s/overlays/production > $(K8S_RENDERED)
	$(BIN)/kubernetes-validate --strict --kubernetes-version 1.31.0 --quiet $(K8S_RENDERED)
	$(CHECKOV) --file $(K8S_RENDERED) --framework kubernetes --compact --quiet --skip-download

clean:
	rm -rf .run out .cache .pytest_cache .mypy_cache .ruff_cache
