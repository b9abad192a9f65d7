#!/usr/bin/env bash
# GPU smoke test: 3 iterations of the embedded SmolLM2 on one CUDA device (bf16-mixed with fp32 masters, vLLM when
# installed, else transformers), then the throughput and peak memory the run reached. Run on a machine with a GPU:
#   bash benchmarks/gpu_smoke.sh [dotted.key=value ...]
# It needs the project installed (make setup; on GPU `pip install vllm` for the vLLM path). It prints the memory
# plan first, the run's per-iteration seconds and tokens/s, and torch's peak allocated CUDA memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
BACKEND=transformers
$PY -c "import vllm" 2>/dev/null && BACKEND=vllm
RUN=${RUN:-runs/gpu-smoke}
ARGS=(policy.device=cuda:0 policy.backend=$BACKEND train.precision=bf16-mixed train.iterations=3 warmup.steps=0
      train.eval_every=0 train.prompts_per_iter=16 train.samples_per_prompt=4 train.micro_batch_size=16
      policy.gpu_memory_utilization=0.3 "log.loggers=[csv]" "$@")
$PY -m pure_rl.train --config configs/default.yaml --dry-run \
  --device-memory "$($PY -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory / 2**30)')" "${ARGS[@]}" || true
$PY - "$RUN" "${ARGS[@]}" <<'PYEOF'
import json, sys, torch
from pure_rl.train import main
run, args = sys.argv[1], sys.argv[2:]
summary = main(["--config", "configs/default.yaml", "--run-dir", run, "--overwrite", *args])
print(json.dumps({"seconds_per_iteration": summary["seconds_per_iteration"],
                  "peak_cuda_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                  "device": torch.cuda.get_device_name(0)}, indent=2))
PYEOF
