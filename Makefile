# The front door. Two commands on a fresh machine (Python 3.11 and pip only):
#   make train   install into .venv, simulate the default trial, train, track, register, report
#   make test    install into .venv, run the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

# No usage reporting: these machines have no internet and clinics do not want it.
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export BENTOML_HOME := $(CURDIR)/.bentoml
export UV_CACHE_DIR := $(CURDIR)/.cache/uv
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

SCENARIO ?= final
N ?= 99
SEED ?= 2024
DATA ?= data/simulated/$(SCENARIO)-n$(N)-seed$(SEED).csv
PORT ?= 3000

.PHONY: help install train simulate validate serve test test-fast bench bench-quick lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements/lock.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c requirements/lock.txt -e ".[dev]"
	@touch $@

install: $(BIN)/.installed ## create .venv with the pinned, known-good versions

simulate: install ## simulate the default trial (SCENARIO, N, SEED) into DATA
	$(BIN)/responders simulate --scenario $(SCENARIO) --n $(N) --seed $(SEED) --out $(DATA)

validate: simulate ## check DATA against the data contract
	$(BIN)/responders validate $(DATA)

train: validate ## simulate, validate, train, track, register and report on the default trial
	$(BIN)/responders train $(DATA) --summary-json reports/train-summary.json

test: install ## run the test suite
	$(BIN)/pytest

lint: install ## static checks
	$(BIN)/ruff check features training serving tests benchmarks

clean: ## remove the virtual environment and caches (keeps mlruns/)
	rm -rf $(VENV) .cache .pytest_cache
