"""Supervised warm-up on reference solutions: ``python -m pure_rl.warmup --config X --out DIR``.

Teaches a model the task's format before RL, so that there is something to reinforce either way:
solutions vary in step count and style (reference steps, merged steps, filler steps such as "Let me check
this." that the rule PRM scores as neutral), and end with ``\\boxed{answer}`` and EOS. The result is an HF
model folder that ``policy.model`` can point at. A run config's ``warmup`` section does the same inside
``python -m pure_rl.train``, cached (:func:`warmed_up_model`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["FILLERS", "varied_solution", "warmed_up_model", "warmup", "warmup_configured_policy"]

# Bump when warm-up data or training changes, so that cached warm-ups are rebuilt.
_WARMUP_VERSION = "1"

FILLERS = [
    "Let me think about this step by step.",
    "Let me check this.",
    "This is a simple problem.",
    "I will compute it carefully.",
]


def varied_solution(solution: str, rng: random.Random) -> str:
    """A reference solution with its style varied: steps merged, or filler steps inserted."""
    steps = solution.split("\n\n")
    style = rng.random()
    if style < 0.25 and len(steps) > 2:
        i = rng.randrange(len(steps) - 2)
        steps[i : i + 2] = [steps[i] + " " + steps[i + 1]]
    elif style < 0.5:
        for _ in range(rng.randint(1, 3)):
            steps.insert(rng.randrange(len(steps)), rng.choice(FILLERS))
    return "\n\n".join(steps)


def warmup(
    model,
    tokenizer,
    problems,
    *,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    prompt_ids=None,
    seed: int = 0,
    log_every: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` in place on prompt -> solution pairs (loss on the solution tokens only).

    Args:
        model: causal LM.
        tokenizer: its tokenizer (EOS ends every solution).
        problems: a problem source with ``problem(i)`` giving ``question`` and ``solution``.
        steps, batch_size, lr: optimisation.
        prompt_ids: prompt encoder (the policy's, so warm-up and RL see the same prompt); default: the question.
        seed: data order and solution styles.
        log_every: print the mean loss every this many steps (0: never).
        progress: show a tqdm bar with the loss.

    Returns:
        The loss of every step.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    encode_prompt = prompt_ids or (lambda q: tokenizer.encode(q + "\n\n", add_special_tokens=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses = []
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="warm-up", dynamic_ncols=True)
    for step in range(steps):
        rows = []
        for _ in range(batch_size):
            p = problems.problem(rng.randrange(len(problems) or 1_000_000))  # len 0: an unbounded generator
            if not p.solution:
                raise ValueError(
                    f"warm-up needs reference solutions, but problem {p.id} has none: use a task with solutions "
                    "(arithmetic, gsm8k, math500) or set warmup.steps=0"
                )
            prompt = encode_prompt(p.question)
            answer = tokenizer.encode(varied_solution(p.solution, rng), add_special_tokens=False)
            rows.append((prompt, [*answer, tokenizer.eos_token_id]))
        width = max(len(a) + len(b) for a, b in rows)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            seq = prompt + answer
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(prompt) : len(seq)] = torch.tensor(answer)
            attention[i, : len(seq)] = 1
        out = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log_every and (step + 1) % log_every == 0:
            print(f"warm-up step {step + 1}/{steps}: loss {sum(losses[-log_every:]) / log_every:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return losses


def warmup_configured_policy(
    cfg,
    out: str | Path,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int = 0,
    progress: bool = False,
) -> list[float]:
    """Warm up ``cfg.policy.model`` on ``cfg``'s task with the policy's own prompt encoding (so warm-up and RL
    see the same prompts), and save the model and tokenizer to ``out``. Returns the loss of every step."""
    from agents import make_policy
    from envs import make_source

    cfg = copy.deepcopy(cfg)
    cfg.policy.backend = "transformers"  # training needs the torch model only, never a generation engine
    policy = make_policy(cfg)
    losses = warmup(
        policy.model,
        policy.tokenizer,
        make_source(cfg),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        prompt_ids=lambda q: policy.prompt_ids(cfg.env.prompt_template.format(question=q)),
        seed=seed,
        log_every=log_every,
        progress=progress,
    )
    policy.model.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    return losses


def _warmup_key(cfg) -> dict:
    """Everything the warmed-up weights depend on."""
    from agents.models import resolve_model_dir

    source = Path(resolve_model_dir(cfg.policy.model))
    weights = source / "model.safetensors"
    env = cfg.env
    return {
        "version": _WARMUP_VERSION,
        "model": str(source),
        # A local folder's weights can change under the same path: their size and time are part of the key.
        "weights": [weights.stat().st_size, weights.stat().st_mtime_ns] if weights.is_file() else None,
        "dtype": cfg.policy.dtype,
        "task": [env.task, env.dataset, env.difficulty],
        "prompt": [env.prompt_template, env.use_chat_template],
        "warmup": [cfg.warmup.steps, cfg.warmup.batch_size, cfg.warmup.lr],
        "seed": cfg.train.seed,
    }


def warmed_up_model(cfg) -> str:
    """The model RL starts from: ``cfg.policy.model`` itself when ``warmup.steps`` is 0, else that model warmed up
    on the task per ``cfg.warmup`` and saved in the cache (built on first use, then reused).

    The cache folder is ``<cache>/warmup/<model>-<hash>`` (``<cache>``: see :func:`agents.models.cache_dir`);
    it holds ``warmup.json`` with the key, the losses and the seconds taken.
    """
    if cfg.warmup.steps == 0:
        return cfg.policy.model
    from agents.models import cache_dir

    key = _warmup_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "warmup" / f"{Path(key['model']).name}-{digest}"
    if (target / "warmup.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"warm-up: {cfg.warmup.steps} supervised steps on the task before RL (once; cached in {target})")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".warming-"))
    try:
        losses = warmup_configured_policy(
            cfg,
            tmp,
            steps=cfg.warmup.steps,
            batch_size=cfg.warmup.batch_size,
            lr=cfg.warmup.lr,
            seed=cfg.train.seed,
            progress=True,
        )
        seconds = time.perf_counter() - t0
        (tmp / "warmup.json").write_text(json.dumps({"key": key, "losses": losses, "seconds": seconds}, indent=2))
        tmp.rename(target)  # atomic: a killed warm-up never leaves a half-written folder behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"warm-up done in {seconds:.0f}s (loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    return str(target)


def main(argv: list[str] | None = None) -> Path:
    from pure_rl.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="python -m pure_rl.warmup", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run config: its policy.model is the starting point")
    p.add_argument("--out", required=True, help="folder to save the warmed-up model in")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides; the warm-up reads the config's warmup section, e.g. warmup.steps=300 warmup.lr=3e-3",
    )
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if cfg.warmup.steps == 0:
        sys.exit("config error: warmup.steps is 0 in this config; pass e.g. warmup.steps=300")
    out = Path(args.out)
    losses = warmup_configured_policy(
        cfg,
        out,
        steps=cfg.warmup.steps,
        batch_size=cfg.warmup.batch_size,
        lr=cfg.warmup.lr,
        seed=cfg.train.seed,
        log_every=max(1, cfg.warmup.steps // 10),
    )
    print(f"saved warmed-up model to {out} (loss {losses[0]:.3f} -> {losses[-1]:.3f}); use policy.model={out}")
    return out


if __name__ == "__main__":
    main()
