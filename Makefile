# Two commands on a fresh machine: `make train` and `make test`.
# Both create .venv on first use and install the project with its pinned dependencies.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/default
PYTEST_WORKERS ?= 2

.PHONY: train test test-slow lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
