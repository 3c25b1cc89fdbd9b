# `make demo` and `make test` each create .venv (if missing) and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean-demo

# pip byte-compiles what it installs (no --no-compile: where PYTHONDONTWRITEBYTECODE=1, as on the
# development machine, every process, each Ray worker too, would compile torch, Ray and RAIL again
# on import; BENCHMARKS.md "The install without byte-compiling")
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,report,peers]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check study analysis benchmarks tests
	$(VENV)/bin/ruff format --check study analysis benchmarks tests
	$(VENV)/bin/mypy

# The demo: the built-in synthetic universe (cached under demo/cache), a small gamma study on CPU
# (search_spaces/demo.yaml, `demo` preset), and its report. Each run writes a new, timestamped study
# directory (nothing is overwritten); demo/latest points at the newest one.
DEMO_STUDY := demo/study-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	mkdir -p demo
	PHOTOZ_CACHE=$(CURDIR)/demo/cache $(PY) -m study.run --search demo --preset demo --out $(DEMO_STUDY)
	PHOTOZ_CACHE=$(CURDIR)/demo/cache $(PY) -m analysis.report $(DEMO_STUDY)
	ln -sfn $(notdir $(DEMO_STUDY)) demo/latest
	@echo "report: $(DEMO_STUDY)/report/report.html (also demo/latest/report/report.html)"
