# The registry's everyday commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test check format install services clean bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies

run: $(STAMP) ## run the whole registry on embedded defaults (SQLite, ./var/storage, no broker server)
	$(BIN)/python -m shared.runner

services: ## install and start what the tests need (clients, Docker engine, HAProxy, MariaDB, Redis)
	bash scripts/test-services.sh

test: $(STAMP) services ## run the whole test suite (SQLite and MariaDB, real clients)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP) ## lint, format check and type check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy shared services/api-gateway/api_gateway services/blob-service/blob_service \
		services/manifest-service/manifest_service services/janitor/janitor tests bench

bench: $(STAMP) ## benchmark against the reference registry (options: make bench ARGS="--quick")
	$(BIN)/python -m bench.run $(ARGS)

format: $(STAMP) ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the environment and local data
	rm -rf $(VENV) var
