# `make demo` and `make test` each create .venv (if missing) and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check study analysis benchmarks tests
	$(VENV)/bin/ruff format --check study analysis benchmarks tests

demo: $(STAMP)
	$(PY) -m study.data universe --n 3000 --seed 0 --out demo/universe.h5 --force-cache
