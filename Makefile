# The same targets for people and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENV_MIN := $(VENV)-min
STAMP_MIN := $(VENV_MIN)/.installed
# One resolution for every platform (markers kept), for the Python the image and CI run; every file hashed.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(LOCK_FLAGS)

.PHONY: venv deps test unit lint demo demo-once bench clean lock image test-min

# The exact versions CI tested (hash-checked), then the package itself without resolving anything again.
$(STAMP): pyproject.toml requirements-dev.lock sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
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
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache .mypy_cache .ruff_cache *.egg-info

## Re-resolve the lock files after a change to pyproject.toml (needs PyPI). Pins that still satisfy pyproject.toml
## are kept; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest allowed versions.
##   requirements.lock        runtime dependencies: what the image installs
##   requirements-dev.lock    runtime + the dev extra, same runtime versions: what .venv installs
##   requirements-build.lock  the build backend (pyproject's build-system.requires): what builds the image's wheel
##   requirements-min.lock    the lowest versions pyproject.toml allows for direct dependencies: make test-min
lock: venv
	$(LOCK) pyproject.toml -o requirements.lock
	$(LOCK) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(LOCK) - -c requirements-dev.lock -o requirements-build.lock
	$(LOCK) pyproject.toml --extra dev --resolution lowest-direct -o requirements-min.lock

## The Docker image (kprofefe-tasks:dev) on a local Debian 12 base; installs Docker and starts dockerd if needed.
image:
	scripts/build-image

$(STAMP_MIN): pyproject.toml requirements-min.lock sandbox/pyproject.toml
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	echo '*' > $(VENV_MIN)/.gitignore  # git ignores the venv by itself, as uv's and Python 3.13's venvs do
	$(VENV_MIN)/bin/pip install -q --require-hashes -r requirements-min.lock
	$(VENV_MIN)/bin/pip install -q --no-deps -e .
	$(VENV_MIN)/bin/pip install -q --no-deps -e ./sandbox
	touch $(STAMP_MIN)

## The unit and integration tiers again, at the lowest versions pyproject.toml allows (requirements-min.lock), so
## a floor in pyproject.toml is a tested promise. Chaos and image tests run once, in `make test`.
test-min: $(STAMP_MIN) deps
	$(VENV_MIN)/bin/pytest -q -ra -m "not chaos and not image"
