# Two entry points for a fresh machine; each creates .venv and installs what it needs (once).
#   make demo   train the default small GPT on the embedded corpus (runs/default)
#   make test   run the test suite on CPU
# VENV=DIR puts the environment elsewhere; PYTHON=python3.X picks the interpreter that creates it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstalls when the packaging changes (dependencies, extras, console scripts).
STAMP = $(VENV)/.installed-$(shell cat pyproject.toml setup.py | md5sum | cut -c1-12)

.PHONY: demo test install

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lmjax.main --config=configs/default.py --workdir=runs/default

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests
