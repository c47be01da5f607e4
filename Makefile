# The verbs a person uses. `make dev` and `make test` do all their own set-up on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := libs/crawldex/src services/ingest-api/src services/index-worker/src services/rescrape-worker/src tests

.PHONY: help install dev test test-fast lint format worker clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv from uv.lock (installs uv if missing)

$(VENV)/.installed: uv.lock pyproject.toml libs/crawldex/pyproject.toml services/*/pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh
	@touch $@

dev: install ## run the whole pipeline in one process on embedded defaults on 127.0.0.1:8000
	scripts/dev.sh

worker: install ## run one index-worker process (needs a Qdrant server: CRAWLDEX_QDRANT_URL)
	$(VENV)/bin/crawldex-index-worker

test: install ## run every test (unit, integration, e2e; slow ones included)
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

clean: ## remove the virtualenv, caches and the dev data
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data .run
