# Two commands do everything, each setting itself up on a fresh machine:
#   make train   - the main job on the embedded default (CPU)
#   make test    - the whole test suite (slow and vLLM stages included)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup train test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local file here); otherwise the resolver pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(STAMP)

train: $(STAMP)
	$(PY) benchmarks/credit.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not vllm"

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/credit.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
