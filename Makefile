# `make demo` and `make test` each create .venv (if missing) and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean-demo

# --no-compile: pip would byte-compile every installed module (torch, Ray, RAIL: 157 CPU-s of
# install against 101 without); Python compiles the ones a process imports on first use instead
# (16 CPU-s for what make demo imports). Measured by one interleaved pair under load, BENCHMARKS.md.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[dev,report,peers]'
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
