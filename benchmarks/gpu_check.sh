#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one table of what pure-rl does on one CUDA device, with no hub and no
# network, in under 8 minutes on an H200. On a machine that lacks this project's dependencies, carry the wheels
# and tokenizer that benchmarks/gpu_wheels.sh prepares (.whl/, .gpu/): they are installed into /tmp/site here.
#   bash benchmarks/gpu_check.sh [--out DIR] [--rows tiny,single_gpu,lora,trl]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ! "$PY" -c "import torchrl" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
TOKENIZER=()
[ -f .gpu/tokenizer/tokenizer.json ] && TOKENIZER=(--tokenizer .gpu/tokenizer)
exec "$PY" benchmarks/gpu_check.py --device cuda:0 "${TOKENIZER[@]}" "$@"
