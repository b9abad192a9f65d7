"""Shared fixtures: tiny models built offline (seconds), cached for the session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from agents.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from agents.tiny import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def warm_tiny_path(tmp_path_factory, tiny_model_path):
    """The tiny model after a short supervised warm-up: it writes separated steps, boxed answers and EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from envs.tasks import ArithmeticTask
    from pure_rl.warmup import warmup

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    warmup(model, tokenizer, ArithmeticTask(1, seed=0), steps=150, batch_size=16, seed=0)
    out = tmp_path_factory.mktemp("warm") / "tiny-warm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def greedy_cfg(warm_tiny_path):
    """Config factory: the tiny config on the warmed-up model, greedy, 3 prompts x 2 samples, up to 8 steps and
    80 tokens, plus any dotted overrides passed."""
    from pure_rl.config import load_config

    def make(*extra: str):
        return load_config(
            "configs/tiny.yaml",
            [
                f"policy.model={warm_tiny_path}",
                "policy.temperature=0",
                "env.max_tokens=80",
                "env.max_steps=8",
                "train.prompts_per_iter=3",
                "train.samples_per_prompt=2",
                *extra,
            ],
        )

    return make


@pytest.fixture(scope="module")
def tiny_prm_model(tiny_tokenizer):
    """A randomly initialised 2-way token-classification Qwen2 on the tiny tokenizer (a PRM's shape, no training)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return Qwen2ForTokenClassification(config).eval()
