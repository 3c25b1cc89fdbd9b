# `make demo` and `make test` each create .venv (if missing) and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# what `make demo` runs; `make test` and `make lint` add the dev tools (a variable: $(call)
# would split the extras at their commas)
EXTRAS := .[report,peers]
DEV_EXTRAS := .[dev,report,peers]

.PHONY: demo test lint install clean-demo

# INSTALLER=uv (the default): pip installs uv into the venv, and uv installs the project under
# pip's own settings (tools/uv_install.py): 61-101 s from a fresh clone where pip alone took
# 151-199 on the 2-core development machine (BENCHMARKS.md "make demo"). INSTALLER=pip: pip alone.
#
# The venv gets bytecode for everything it installs: where PYTHONDONTWRITEBYTECODE=1, as on the
# development machine, every process, each Ray worker too, would otherwise compile torch, Ray
# and RAIL again on import (BENCHMARKS.md "The install without byte-compiling"). Neither
# installer compiles (uv does not by default; pip is told --no-compile): compileall -j 0 compiles
# the same files, timestamp-checked .pyc as pip writes, on every core (about 20 s less than pip's
# one file at a time on 2 cores). Like pip, it goes on past the odd file that is not Python 3 (a
# template, a test fixture).
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
define install_project
	$(PY) -m pip install -q 'uv>=0.9'
	$(PY) tools/uv_install.py -q -e '$(1)'
	$(PY) -W ignore::SyntaxWarning -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
endef
else
define install_project
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '$(1)'
	$(PY) -W ignore::SyntaxWarning -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
endef
endif

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call install_project,$(EXTRAS))
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(call install_project,$(DEV_EXTRAS))
	touch $(DEV_STAMP)

install: $(STAMP)

test: $(DEV_STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check study analysis benchmarks tests tools
	$(VENV)/bin/ruff format --check study analysis benchmarks tests tools
	$(VENV)/bin/mypy

# The demo: the built-in synthetic universe (cached under demo/cache), a small gamma study on CPU
# (search_spaces/demo.yaml, `demo` preset), and its report. Each run writes a new, timestamped study
# directory (nothing is overwritten); demo/latest points at the newest one.
#
# The peers (analysis.peers: RAIL's estimators on the same universe, cached by its content hash)
# start first, in the background: they build the universe (study.run waits for it on the cache's
# lock), then drop to nice 19 and run on what the trials leave of the cores; the report then reads
# them from the cache (about 30 s less than running them after the study: BENCHMARKS.md "make
# demo"). Their output goes to $(DEMO_STUDY)-peers.log; if they fail, the report runs them itself
# and says why. A failed study stops them (Ctrl-C stops both: checked in a pty).
DEMO_STUDY := demo/study-$(shell date +%Y%m%d-%H%M%S)
DEMO_ENV := PHOTOZ_CACHE=$(CURDIR)/demo/cache
demo: $(STAMP)
	mkdir -p demo
	$(DEMO_ENV) $(PY) -m analysis.peers --preset demo --nice 19 > $(DEMO_STUDY)-peers.log 2>&1 & \
	peers=$$!; \
	$(DEMO_ENV) $(PY) -m study.run --search demo --preset demo --out $(DEMO_STUDY) \
		|| { kill $$peers 2> /dev/null; exit 1; }; \
	wait $$peers || echo "the peers failed (see $(DEMO_STUDY)-peers.log): the report runs them"
	$(DEMO_ENV) $(PY) -m analysis.report $(DEMO_STUDY)
	ln -sfn $(notdir $(DEMO_STUDY)) demo/latest
	@echo "report: $(DEMO_STUDY)/report/report.html (also demo/latest/report/report.html)"
