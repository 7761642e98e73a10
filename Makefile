# lmforge: `make demo` runs the whole pipeline, `make test` runs the test suite (both set up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements.txt pyproject.toml | sha256sum | cut -c1-12)

# Real data sets: ../shared/data when it exists, unless LMFORGE_DATA_DIR is already set.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin LMFORGE_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export LMFORGE_DATA_DIR := $(SHARED_DATA)
endif
endif
# DeepSpeed JIT-builds a CPU comm op on first use; keep the build between runs.
export TORCH_EXTENSIONS_DIR ?= $(abspath .torch_extensions)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv demo ui test test-all check clean-store

venv: $(STAMP)

# pip's output (location warnings and all) goes to $(VENV)/install.log; shown only if it fails.
PIP_LOG := $(VENV)/install.log
$(STAMP): requirements.lock requirements.txt pyproject.toml
	@echo "installing the pinned dependencies into $(VENV) (log: $(PIP_LOG)) ..."
	@$(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --upgrade pip \
	  && $(BIN)/python -m pip install -r requirements.txt -c requirements.lock \
	  && $(BIN)/python -m pip install --no-deps -e . ) > $(PIP_LOG) 2>&1 \
	  || { tail -40 $(PIP_LOG); echo "pip install failed; full log: $(PIP_LOG)"; exit 1; }
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/lmforge run configs/demo.yaml

# A local Prefect server + UI at http://127.0.0.1:4200; its database stays in lmforge-prefect/.
ui: $(STAMP)
	$(BIN)/lmforge ui --home lmforge-prefect

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean-store:
	rm -rf lmforge-store
