# Two entry points for a fresh machine; each creates .venv and installs what it needs (once).
#   make demo   train the default small GPT on the embedded corpus (runs/default)
#   make test   run the test suite on CPU, then the Apache Beam test in its own environment (.venv-beam: Beam pins
#               protobuf and pyarrow below the training stack's, so it never shares an environment with it)
# VENV=DIR puts the environment elsewhere; PYTHON=python3.X picks the interpreter that creates it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstalls when the packaging changes (dependencies, extras, console scripts).
STAMP = $(VENV)/.installed-$(shell cat pyproject.toml setup.py | md5sum | cut -c1-12)
BEAM_VENV ?= .venv-beam
BEAM_PY := $(BEAM_VENV)/bin/python
BEAM_STAMP = $(BEAM_VENV)/.installed-$(shell cat pyproject.toml setup.py | md5sum | cut -c1-12)

.PHONY: demo test install test-beam

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(BEAM_STAMP): pyproject.toml setup.py
	test -x $(BEAM_PY) || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_PY) -m pip install --quiet --upgrade pip
	$(BEAM_PY) -m pip install --quiet -e ".[beam,data]" "pytest>=8.0"
	rm -f $(BEAM_VENV)/.installed-*
	touch $(BEAM_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lmjax.main --config=configs/default.py --workdir=runs/default

test: $(STAMP) $(BEAM_STAMP)
	$(PY) -m pytest -q -n 2 tests
	$(BEAM_PY) -m pytest -q tests/beam

test-beam: $(BEAM_STAMP)
	$(BEAM_PY) -m pytest -q tests/beam
