"""Export: a run's checkpoint as an HF model folder that transformers (and vLLM) load, in the training dtype
or the fp32 masters."""

from __future__ import annotations

import json

import pytest
import torch

from pure_rl.export import main as export
from pure_rl.train import main as train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, warm_tiny_path):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(
        ["--config", "configs/tiny.yaml", "--run-dir", str(run_dir), f"policy.model={warm_tiny_path}",
         "train.precision=bf16-mixed"]
    )  # fmt: skip
    return run_dir


def test_export_reloads_with_the_checkpoint_weights_in_the_requested_dtype(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    masters = export(["--run-dir", str(trained_run), "--out", str(tmp_path / "fp32"), "--dtype", "float32"])
    model = AutoModelForCausalLM.from_pretrained(masters)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    assert AutoTokenizer.from_pretrained(masters).encode("3 + 4 = 7")
    assert json.loads((masters / "export.json").read_text())["iteration"] == 2

    default = export(["--run-dir", str(trained_run), "--out", str(tmp_path / "default")])
    bf16 = AutoModelForCausalLM.from_pretrained(default, dtype="auto")
    assert next(bf16.parameters()).dtype == torch.bfloat16  # the run computed in bf16 (bf16-mixed)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        close = torch.allclose(bf16.float()(ids).logits, model(ids).logits, atol=0.1)
    assert close


def test_export_never_overwrites(trained_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        export(["--run-dir", str(trained_run), "--out", str(out)])
    assert (out / "mine.txt").read_text() == "keep"
