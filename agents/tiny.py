"""Tiny models built offline in seconds, for tests and the ``tiny`` config.

A byte-level BPE tokenizer trained on generated arithmetic text (Qwen2's split regex, so merged separator
tokens such as ``".\\n\\n"`` occur as in real models) and a small Qwen2 causal LM whose head size is 32 (the
smallest vLLM's CPU kernels take). Both save to a folder that ``AutoTokenizer`` / ``AutoModelForCausalLM``
reload identically, so every code path that takes "an HF model folder" can be tested with them.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["TINY_SPECIAL_TOKENS", "build_tiny_causal_lm", "build_tiny_tokenizer", "tiny_model_dir"]

# Qwen2's pre-tokenizer split: digits alone, punctuation runs absorb following newlines (".\n\n").
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_VERSION = "1"


def _corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Generated text close to what the tiny model will see: questions, prompts, equations, boxed answers."""
    rng = random.Random(seed)
    words = "Tom Ann has apples books coins buys gives away more then How many does now step answer The is".split()
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*/")
        lines.append(
            f"{' '.join(rng.choices(words, k=6))} {a} {op} {b} = {rng.randint(0, 9999)}.\n\n"
            f"So the answer is \\boxed{{{rng.randint(0, 999)}}}.\n\n"
            'Please reason step by step with steps separated by "\\n\\n", and put your final answer within \\boxed{}.'
        )
    return lines


def build_tiny_tokenizer(vocab_size: int = 400):
    """A ``PreTrainedTokenizerFast`` with EOS ``<|endoftext|>``, pad, ``<extra_0>`` and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # use_regex=False on ByteLevel: the Qwen2 Split does the splitting, and AutoTokenizer reloads it identically.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<extra_0>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_causal_lm(tokenizer, hidden_size: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised small Qwen2 causal LM (head size 32, tied embeddings), float32."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=hidden_size // 32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(torch.float32).eval()


def tiny_model_dir(root: str | Path, hidden_size: int = 64, layers: int = 2) -> Path:
    """Build (once) and save the tiny tokenizer and a causal LM of this size under ``root``; return its folder."""
    size = "" if (hidden_size, layers) == (64, 2) else f"-{hidden_size}x{layers}"
    path = Path(root) / f"tiny-qwen2{size}-v{TINY_VERSION}"
    if not (path / "config.json").is_file():
        if hidden_size % 32 or hidden_size <= 0 or layers <= 0:
            raise ValueError(
                f"a tiny model needs a hidden size that is a multiple of 32 and >= 1 layer, got {hidden_size}x{layers}"
            )
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_causal_lm(tokenizer, hidden_size=hidden_size, layers=layers)
        path.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(path)
        model.save_pretrained(path)
    return path
