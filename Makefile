# Two commands on a fresh machine: `make train` and `make test`.
# Both create .venv on first use and install the project at the exact versions of
# constraints.txt (pyproject.toml only declares compatible ranges).
# On a GPU or TPU host: `make accelerator-check` (docs/accelerators.md).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/default
PYTEST_WORKERS ?= 2

WHEELHOUSE ?= wheelhouse
WHEELHOUSE_PYTHON ?= 3.12
ACCELERATOR_REPORT ?= runs/accelerator_check/report.json

.PHONY: train test test-slow lint format clean accelerator-check wheelhouse constraints

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

## Train the embedded default (numbers corpus, small model) and print sample translations.
train: $(STAMP)
	$(PY) train.py --config=configs/default.py --workdir=$(WORKDIR)

## Lint, then the quick test suite (slow tests excluded).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS)

## Slow tests only (minutes each; need ../shared/data/multi30k for some).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## On a GPU/TPU host: install (keeping the host's JAX if it sees the accelerator; offline from
## $(WHEELHOUSE) if present), run the accelerator tests and benchmarks, write one JSON report.
## Needs only a Python 3.11+; does not use .venv.
accelerator-check:
	$(PYTHON) scripts/accelerator_check.py --wheelhouse=$(WHEELHOUSE) --report=$(ACCELERATOR_REPORT)

## Wheels for an offline accelerator host (CPython $(WHEELHOUSE_PYTHON), manylinux x86-64; not
## JAX/CUDA): see scripts/build_wheelhouse.py.
wheelhouse: $(STAMP)
	$(PY) scripts/build_wheelhouse.py --dest=$(WHEELHOUSE) --python-version=$(WHEELHOUSE_PYTHON)

## Re-resolve constraints.txt: the newest versions within pyproject.toml's ranges, in a
## throwaway venv (then run `make test` and commit both files).
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip
	.venv-constraints/bin/python -m pip install --quiet -e '.[test]'
	head -3 constraints.txt > constraints.txt.new
	.venv-constraints/bin/python -m pip freeze --exclude-editable >> constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .venv-accelerator .pytest_cache .ruff_cache
