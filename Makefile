# Quickstart targets: each sets up .venv on a fresh machine by itself, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU torch build on disk is taken explicitly so no multi-GB CUDA build is pulled;
	# where a CUDA torch is already importable in the venv it is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15 tests

demo: $(STAMP)
	$(PY) -m msa demo

clean:
	rm -rf $(VENV) build src/*.egg-info
