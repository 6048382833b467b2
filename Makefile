# The two commands a fresh machine needs:
#   make run    set up (venv, dependencies, default model) and serve on 127.0.0.1:11434
#   make test   set up, run the lint checks, then the whole test suite
# Both reuse what is there: the venv is rebuilt only when pyproject.toml changes,
# and pip keeps the llama-cpp-python wheel it built (about 8 minutes the first time).
# The lint checks alone: make lint (ruff check, ruff format --check and mypy over src/,
# configured in pyproject.toml). make bench: ember beside llama-server (bench/peers.sh).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ember-installed
MODEL ?= smollm2:135m

.PHONY: run test lint setup bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "ember needs Python 3.11 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	touch $(STAMP)

# Debian packages: bubblewrap sandboxes the agents' shell tool; chromium runs the dashboard's
# browser tests. scripts/debian-packages.sh installs only what is missing.
run: $(STAMP)
	scripts/debian-packages.sh bubblewrap
	$(BIN)/ember pull $(MODEL)
	exec $(BIN)/ember serve

lint: $(STAMP)
	$(BIN)/ruff check src
	$(BIN)/ruff format --check src
	$(BIN)/mypy

test: lint
	scripts/debian-packages.sh bubblewrap chromium
	$(BIN)/python -m pytest

bench: $(STAMP)
	bench/peers.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build src/*.egg-info
