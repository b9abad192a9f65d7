"""LoRA through peft: adapters train while the base stays frozen, the KL reference is the base with adapters off,
checkpoints hold the adapters and resume exactly, engines get merged weights, export merges."""

from __future__ import annotations

import pytest
import torch

from agents.lora import adapter_state, apply_lora, iter_engine_weights
from pure_rl.plots import read_metrics
from pure_rl.train import main

TINY = "configs/tiny.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_run(run_dir, warm_tiny_path, *extra: str):
    return main(["--config", TINY, "--run-dir", str(run_dir), f"policy.model={warm_tiny_path}", "lora.rank=4",
                 "train.lr=1e-3", "train.checkpoint_every=1", *extra])  # fmt: skip


def test_a_lora_run_trains_the_adapters_only_and_resumes_exactly(tmp_path, warm_tiny_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(warm_tiny_path).state_dict()
    lora_run(tmp_path / "full", warm_tiny_path, "train.iterations=3")
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert ckpt["model"] and all("lora_" in k for k in ckpt["model"]), "the checkpoint holds the adapters only"
    assert any(v.abs().sum() > 0 for k, v in ckpt["model"].items() if "lora_B" in k), "the adapters trained"
    rows = read_metrics(tmp_path / "full" / "logs" / "scalars")
    assert all(r["grad_norm"] > 0 for r in rows) and rows[-1]["kl"] != 0  # the reference (adapters off) differs

    lora_run(tmp_path / "resumed", warm_tiny_path, "train.iterations=2")
    main(["--resume", str(tmp_path / "resumed"), "train.iterations=3"])
    resumed = read_metrics(tmp_path / "resumed" / "logs" / "scalars")
    for a, b in zip(rows, resumed):
        for key in ("loss", "kl", "grad_norm", "reward_return", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["iteration"], key)

    # The base weights never moved: the exported merged model minus the adapters' deltas is the start model.
    from pure_rl.export import main as export

    out = export(["--run-dir", str(tmp_path / "full"), "--out", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(merged) == set(base)
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all(any(t in k for t in TARGETS) for k in changed), "only adapted layers changed"


def test_engine_weights_are_the_merged_weights_without_touching_the_base(warm_tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_lora(model, 4, 8.0, 0.0, TARGETS)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    weights = dict(iter_engine_weights(peft_model))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    plain = AutoModelForCausalLM.from_pretrained(warm_tiny_path)
    plain.load_state_dict(weights, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, expected, atol=1e-5, rtol=0)
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in peft_model.state_dict().items() if "lora_" not in k}  # fmt: skip
    assert all(torch.equal(base_now[k], before[k]) for k in before), "computing merged weights changed the base"
    assert len(adapter_state(peft_model)) == 2 * 2 * len(TARGETS)  # A and B, 2 layers, 7 projections


def test_bad_lora_target_modules_name_the_model_s_layers(warm_tiny_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match=r"lora\.target_modules=\['attn'\].*linear layers: \[.*'q_proj'"):
        apply_lora(AutoModelForCausalLM.from_pretrained(warm_tiny_path), 4, 8.0, 0.0, ["attn"])
