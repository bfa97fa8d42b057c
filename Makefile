# The front door. Two commands on a fresh machine (Python 3.11 and pip only):
#   make train   install into .venv, simulate the default trial, train, track, register, report
#   make test    install into .venv, run the test suite (the CI gate)
#   make test-fast  the edit-test loop: every test but full training jobs, servers and browsers
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
# The default draw: the seed of 1-2000 closest to the published FINAL figures (training/published.py, DEFAULT_SEED).
SEED ?= 417
DATA ?= data/simulated/$(SCENARIO)-n$(N)-seed$(SEED).csv
PORT ?= 3000
MLFLOW_PORT ?= 5000
TRACKING_URI ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///mlruns/mlflow.db)
SPEC ?=

.PHONY: help install compile train simulate validate serve bento test test-fast bench bench-quick lint clean browser report docs docs-serve mlflow

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements/lock.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c requirements/lock.txt -e ".[dev]"
	$(MAKE) --no-print-directory compile
	@touch $@

# Bytecode compiled once at install: uv does not compile (pip does), and every fresh process (a
# training job, each executor worker) would otherwise compile thousands of modules again, about
# 30 s of CPU each on a 2-core machine, or every time under PYTHONDONTWRITEBYTECODE.
compile: ## compile the virtual environment's and the project's Python files to bytecode
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib features core training serving responders benchmarks > /dev/null || true

install: $(BIN)/.installed ## create .venv with the pinned, known-good versions

simulate: install ## simulate the default trial (SCENARIO, N, SEED) into DATA
	$(BIN)/responders simulate --scenario $(SCENARIO) --n $(N) --seed $(SEED) --out $(DATA)

validate: simulate ## check DATA against the data contract
	$(BIN)/responders validate $(DATA)

train: validate ## simulate, validate, train, track, register and report on the default trial
	$(BIN)/responders train $(DATA) --summary-json reports/train-summary.json --report-dir reports

report: install ## one-patient report from the champions for examples/patient.json -> reports/patient.html
	$(BIN)/responders report patient examples/patient.json --out reports/patient.html

# The MLflow UI on the training runs (the default store, or MLFLOW_TRACKING_URI); loopback only. `responders train`
# prints the link to its job's runs.
mlflow: install ## open the MLflow UI on the training runs at http://127.0.0.1:MLFLOW_PORT (Ctrl-C stops it)
	$(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_PORT)

# Serves the registered champions on 127.0.0.1:$(PORT); without RESPONDERS_API_TOKEN in development mode
# (no token needed, with a warning). SPEC names another dataset spec (a YAML path or a packaged name).
serve: install ## serve the champions on 127.0.0.1:PORT (SPEC=... for another dataset spec; token from RESPONDERS_API_TOKEN)
	$(BIN)/responders serve --port $(PORT)$(if $(SPEC), --spec $(SPEC)) --insecure-dev

bento: install ## build a deployable Bento (offline) that carries the current champions (SPEC=... for another spec)
	$(BIN)/responders bento$(if $(SPEC), --spec $(SPEC))

# Debian's chromium for the browser tests (never a downloaded browser). Installing needs root;
# anyone else gets a warning and the browser tests skip (they fail instead when CI is set).
browser: ## install Debian's chromium for the browser tests when missing (as root; otherwise says how)
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update && apt-get install -y --no-install-recommends chromium; } \
			|| echo "WARNING: apt-get could not install chromium; browser tests will be skipped"; \
	else \
		echo "WARNING: chromium is missing; install it as root (apt-get install -y chromium) or browser tests are skipped"; \
	fi

test: install browser ## run the whole test suite (the CI gate)
	$(BIN)/pytest

# The markers (pyproject.toml): slow = a whole training job (or the shared store trained by one), integration =
# a real server process, browser = headless Chromium. Everything else runs here; `make test` stays the CI gate.
test-fast: install ## the edit-test loop: the suite without training jobs, servers and browsers (under 2 minutes)
	$(BIN)/pytest -m "not slow and not integration and not browser" $(PYTEST_ARGS)

# The benchmark peers (EconML, CausalML) are an optional extra, installed only for the benchmarks
# (and compiled like the rest: benchmarks time fresh processes).
$(BIN)/.installed-bench: $(BIN)/.installed pyproject.toml requirements/lock.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c requirements/lock.txt -e ".[dev,bench]"
	$(MAKE) --no-print-directory compile
	@touch $@

# BENCH_ARGS passes options to benchmarks/run.py, e.g. BENCH_ARGS="--sections recovery";
# BENCH_REPLICATES_SCALE=4 runs four times as many recovery replicates (and takes that much longer).
bench: $(BIN)/.installed-bench ## run all benchmarks and rewrite benchmarks/RESULTS.md (hours on 2 cores; BENCH_RECOVERY=short: a few hours, BENCH_RECOVERY=level: the default test's level at n = 99, 300 and 1,000 and its power, about 4 hours; BENCH_DEADLINE=HH:MM (UTC) stops starting trials then; BENCH_RESUME=1 goes on from the last campaign (docs/benchmarks.md))
	BENCH_COMMAND="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(BIN)/.installed-bench ## smoke-run every benchmark on tiny settings into benchmarks/out/
	BENCH_COMMAND="make bench-quick$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# The documentation site (mkdocs.yml, docs/): built --strict, so a broken link, a missing page or a bad
# API reference fails the build (tests/test_docs.py builds it the same way).
docs: install ## build the documentation site into site/ (strict: broken links fail)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: install ## preview the documentation site on 127.0.0.1:8000 (rebuilds on change; Ctrl-C stops it)
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

lint: install ## static checks
	$(BIN)/ruff check features core training serving responders tests examples benchmarks
	$(BIN)/lint-imports --no-cache

clean: ## remove the virtual environment and caches (keeps mlruns/)
	rm -rf $(VENV) .cache .pytest_cache
