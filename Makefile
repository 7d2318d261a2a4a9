# Two commands matter: `make demo` (run the relay on a throwaway Postgres) and `make test`.
# Both install what they need: Debian packages (postgresql-15, wal2json, node), the venv,
# and the npm packages of the realtime-js interop tests.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JSDIR  := tests/interop/js

.PHONY: demo test system-deps demo-deps venv js lint typecheck bench clean help

help:
	@echo "make demo   - run the relay on a throwaway local Postgres with demo tables and a writer"
	@echo "make test   - install everything needed and run the whole test suite"
	@echo "make bench  - every row of the performance table (docs/performance.md); BENCH_ARGS=--full for full sizes"
	@echo "make lint typecheck clean"

system-deps:
	@bash scripts/install-system-deps.sh

# the demo needs Postgres and wal2json only (no node, no browser: those are for the tests)
demo-deps:
	@RELAY_SKIP_NODE=1 RELAY_SKIP_BROWSER=1 RELAY_SKIP_REDIS=1 bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q -e ./client_sdk
	@touch $(STAMP)

venv: $(STAMP)

$(JSDIR)/node_modules/.package-lock.json: $(JSDIR)/package-lock.json
	cd $(JSDIR) && npm ci --no-audit --no-fund --loglevel=error

js: $(JSDIR)/node_modules/.package-lock.json

demo: demo-deps venv
	$(VENV)/bin/relay demo

# --durations: every CI log lists the slowest tests, so a test that creeps toward the 15-minute
# CI line is seen (and shrunk) before the suite crosses it
test: system-deps venv js
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

# one list of what is checked: the relay, the SDK, the tests and the benchmarks
CHECKED := relay client_sdk tests bench

lint: venv
	$(VENV)/bin/ruff check $(CHECKED)
	$(VENV)/bin/ruff format --check $(CHECKED)
	$(VENV)/bin/mypy

typecheck: venv
	$(VENV)/bin/mypy

bench: system-deps venv
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(JSDIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
