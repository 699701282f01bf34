# The same targets for people and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv deps test unit lint demo demo-once bench clean

$(STAMP): pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps -e ./sandbox  # the doubles and the demo: not in the production wheel
	touch $(STAMP)

venv: $(STAMP)

deps:
	scripts/ensure-deps

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Everything: lint, unit, integration (real Redis + real worker processes), chaos, deploy checks.
test: venv deps lint
	$(BIN)/pytest -q -ra

## The tier without Redis or worker processes, four at a time (its tests mostly wait on real timeouts): ~25 s.
unit: venv
	$(BIN)/pytest -q -n 4 -m "not integration and not chaos"

## The real pipeline on a local sandbox cluster until Ctrl-C (see README).
demo: venv deps
	$(BIN)/kprofefe demo

demo-once: venv deps
	$(BIN)/kprofefe demo --once

bench: venv deps
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
