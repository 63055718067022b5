# Two commands for a fresh machine with Python 3.11, git and make:
#   make demo   set up, then run the local sandbox EHR and the app; open the printed URL
#   make test   set up, then run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml launch/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]" -e ./launch
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/back-mice-sandbox demo

test: $(STAMP)
	$(BIN)/python tests/setup_test_deps.py
	$(BIN)/ruff check smart_app launch tests benchmarks fhir_profiles
	$(BIN)/mypy
	SMART_APP_FAIL_ON_SKIP=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check smart_app launch tests benchmarks fhir_profiles
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python tests/setup_test_deps.py
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
