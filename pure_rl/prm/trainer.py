"""Train a token-classification PRM on step labels: ``python -m pure_rl.prm train --config C --out DIR``.

The PRM is a causal LM backbone with a 2-way head (``AutoModelForTokenClassification``), read at each step's
marker (PURE-PRM's ``"\\n"`` after every step, layout ``pure_text``; or Qwen2.5-Math-PRM's step token, layout
``qwen``). Its inputs are built by :class:`envs.prm.PRMInputFormat` and its held-out scores by
:class:`envs.prm.HFTokenClassificationPRM`, the very objects RL scores with, so the saved folder is what
``env.prm=hf env.prm_model=DIR env.prm_layout=LAYOUT`` loads, unchanged.

The loss is the cross-entropy of the head's two classes against each labelled step's target (a hard label 0/1,
or a soft one, the probability the step is correct); unlabelled steps are left out. Problems (all of their
solutions) are split into training and held-out sets, so no held-out question was seen in training. AdamW, linear
warm-up over 10% of the steps then linear decay, gradient norm clipped at 1. Checkpoints (weights, optimiser,
schedule, RNG; the data order is a function of the seed and step) resume exactly with ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch

from pure_rl.config import ConfigError
from pure_rl.prm.labels import LabelError, StepLabels, write_step_labels

__all__ = ["load_backbone", "split_by_problem", "train_prm"]


def split_by_problem(rows: list[StepLabels], heldout_share: float, seed: int) -> tuple[list, list]:
    """(train, held-out) rows; a problem's solutions all go to one side (by ``problem_id`` or the question)."""

    def problem(r: StepLabels) -> str:
        return r.extra.get("problem_id") or r.question

    keys = sorted({problem(r) for r in rows})
    rng = random.Random(seed)
    rng.shuffle(keys)
    n_held = math.ceil(heldout_share * len(keys)) if heldout_share > 0 else 0
    if n_held >= len(keys) and heldout_share > 0:
        raise LabelError(f"{len(keys)} problems cannot be split with prm.heldout_share={heldout_share}: label more")
    held = set(keys[:n_held])
    return [r for r in rows if problem(r) not in held], [r for r in rows if problem(r) in held]


def load_backbone(name: str, layout: str, step_token: str = "<extra_0>", layers: int | None = None):
    """A fresh 2-way token-classification model on the backbone ``name`` and its tokenizer (the Qwen layout's
    step token added when the tokenizer lacks it). ``layers``: keep only the backbone's first ``layers``
    transformer layers (its final norm stays, and the head reads it); the saved folder then loads as a model of
    that depth."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from agents.models import resolve_model_dir

    path = resolve_model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised": that is the head this trains
    try:
        config = AutoConfig.from_pretrained(path, num_labels=2)
        if layers is not None:
            have = config.num_hidden_layers
            if layers > have:
                raise ConfigError(f"prm.backbone_layers={layers}: {path} has only {have} layers (use at most {have})")
            # The weights of the layers left out are read and dropped by from_pretrained; the rest load as they are.
            config.num_hidden_layers = layers
            if getattr(config, "layer_types", None) is not None:
                config.layer_types = config.layer_types[:layers]
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if layout == "qwen" and tokenizer.convert_tokens_to_ids(step_token) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [step_token]})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label, model.config.label2id = {0: "wrong", 1: "correct"}, {"wrong": 0, "correct": 1}
    return model, tokenizer, path


def _loss(model, fmt, rows: list[StepLabels], max_length: int) -> torch.Tensor:
    from envs.prm import batch_prm_inputs

    input_ids, attention, positions = batch_prm_inputs(
        [fmt.encode(r.question, r.steps) for r in rows], fmt.pad_id, max_length
    )
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    rows_at, cols_at, targets = [], [], []
    for i, (row, pos) in enumerate(zip(rows, positions)):
        for p, label in zip(pos, row.labels):
            if label is not None and p >= 0:
                rows_at.append(i)
                cols_at.append(p)
                targets.append(label)
    if not targets:
        return logits.sum() * 0.0  # no labelled step survived truncation in this batch
    logp = torch.log_softmax(logits[rows_at, cols_at].float(), dim=-1)
    q = torch.tensor(targets, dtype=logp.dtype, device=logp.device)
    return -(q * logp[:, 1] + (1 - q) * logp[:, 0]).mean()


def heldout_metrics(model, tokenizer, layout: str, rows: list[StepLabels], batch_size: int, max_length: int) -> dict:
    """:func:`~pure_rl.prm.metrics.prm_metrics` of the model's scores, computed by the scorer RL uses."""
    from envs.prm import HFTokenClassificationPRM
    from pure_rl.prm.metrics import prm_metrics

    was_training = model.training
    scorer = HFTokenClassificationPRM(
        model,
        tokenizer,
        layout=layout,
        device=next(model.parameters()).device,
        batch_size=batch_size,
        max_length=max_length,
    )
    scores = scorer([r.question for r in rows], [r.steps for r in rows])
    model.train(was_training)
    # Monte-Carlo labels say whether each solution reached the answer; converted datasets may not.
    correct = [r.extra.get("solution_correct") for r in rows]
    problems = [r.extra.get("problem_id", r.question) for r in rows]
    return prm_metrics(scores, [r.labels for r in rows], correct=correct, problems=problems)


def train_prm(
    cfg,
    rows: list[StepLabels],
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a PRM per ``cfg.prm`` on ``rows`` and save it (an HF folder) to ``out``; returns the summary
    (held-out metrics before and after, seconds), also written to ``out/prm_train.json``."""
    from pure_rl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from pure_rl.config import config_to_dict, save_config
    from pure_rl.loggers import make_loggers
    from pure_rl.run_dir import RunLock, claim_new_run
    from pure_rl.warmup import warmed_up_model

    out, pc = Path(out), cfg.prm
    train_rows, held_rows = split_by_problem(rows, pc.heldout_share, cfg.train.seed)
    if not train_rows:
        raise LabelError("no training rows after the held-out split")
    with RunLock(out):
        if not resume:
            # The trained PRM is saved as an HF folder: another model's files there are refused, not replaced.
            claim_new_run(out, overwrite, writes=("config.json", "*.safetensors", "tokenizer*.json", "*.bin"))
        elif not (out / "checkpoint.pt").is_file():
            raise LabelError(f"--resume {out}: no checkpoint there to resume from")
        save_config(cfg, out / "config.yaml")
        # The held-out solutions, so a PRM can be measured again on exactly them (pure_rl.prm evaluate).
        write_step_labels(held_rows, out / "heldout.jsonl")
        torch.manual_seed(cfg.train.seed)
        base = pc.base_model or warmed_up_model(cfg)
        model, tokenizer, path = load_backbone(base, pc.layout, layers=pc.backbone_layers)
        model.to(cfg.policy.device).train()
        from envs.prm import PRMInputFormat

        fmt = PRMInputFormat(tokenizer, pc.layout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=pc.lr)
        warm = max(1, pc.steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, max(0.0, (pc.steps - s) / max(1, pc.steps - warm)))
        )
        start = 0
        digest = _digest(rows)
        summary: dict = {
            "labels_digest": digest,
            "base_model": str(path),
            "backbone_layers": model.config.num_hidden_layers,
            "layout": pc.layout,
            "train_rows": len(train_rows),
            "heldout_rows": len(held_rows),
        }
        if resume:
            ckpt = load_checkpoint(out)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            schedule.load_state_dict(ckpt["env"]["schedule"])
            set_rng_state(ckpt["rng"])
            start = ckpt["iteration"]
            summary = json.loads(ckpt["env"]["summary"])
            if summary.get("labels_digest") != digest:
                raise LabelError(
                    f"--resume {out}: the step labels differ from the ones this PRM was being trained on; resume "
                    "with the same --labels, or start over with --overwrite"
                )
        if resume:
            from pure_rl.plots import truncate_metrics

            truncate_metrics(out / "logs" / "scalars", start)  # steps after the checkpoint are trained again
        loggers = make_loggers(cfg, out)
        evaluate = (
            (lambda: heldout_metrics(model, tokenizer, pc.layout, held_rows, pc.batch_size, pc.max_length))
            if held_rows
            else (lambda: {})
        )
        if start == 0:
            summary["heldout_before"] = evaluate()
        t0 = time.perf_counter() - summary.get("train_seconds", 0.0)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=pc.steps, initial=start, desc="PRM training", dynamic_ncols=True)
        order: list[int] = []
        epoch = -1
        for step in range(start, pc.steps):
            # The order is a function of (seed, epoch): a resumed run draws the batches it would have.
            position = step * pc.batch_size
            batch = []
            for pos in range(position, position + pc.batch_size):
                e, offset = divmod(pos, len(train_rows))
                if e != epoch:
                    order = list(range(len(train_rows)))
                    random.Random(cfg.train.seed * 1_000_003 + e).shuffle(order)
                    epoch = e
                batch.append(train_rows[order[offset]])
            loss = _loss(model, fmt, batch, pc.max_length)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            loggers.log_scalar("prm_loss", loss.item(), step + 1)
            loggers.log_scalar("prm_grad_norm", float(grad_norm), step + 1)
            loggers.log_scalar("prm_lr", schedule.get_last_lr()[0], step + 1)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            done = step + 1
            if held_rows and (done % pc.eval_every == 0 or done == pc.steps):
                metrics = evaluate()
                for k, v in metrics.items():
                    loggers.log_scalar(f"prm_eval_{k}", v, done)
                summary["heldout_after"] = metrics
                if bar is not None:
                    shown = {"auc": metrics["step_auc"], "pairs": metrics.get("within_problem_pairs", float("nan"))}
                    bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in shown.items()})
            if done % pc.checkpoint_every == 0 or done == pc.steps:
                summary["train_seconds"] = time.perf_counter() - t0
                save_checkpoint(
                    out,
                    iteration=done,
                    model_state=model.state_dict(),
                    optimizer=optimizer,
                    env_state={"schedule": schedule.state_dict(), "summary": json.dumps(summary)},
                    rng=rng_state(),
                    config=config_to_dict(cfg),
                )
        if bar is not None:
            bar.close()
        loggers.close()
        summary["train_seconds"] = time.perf_counter() - t0
        summary["steps"] = pc.steps
        model.eval()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "prm_train.json").write_text(json.dumps(summary, indent=2))
        for name in ("checkpoint.pt", "checkpoint.json", "checkpoint.prev.pt", "checkpoint.prev.json"):
            (out / name).unlink(missing_ok=True)  # the saved model is the result; the optimiser state is not
    return summary


def _digest(rows: list[StepLabels]) -> str:
    return hashlib.sha256(json.dumps([r.to_json() for r in rows], sort_keys=True).encode()).hexdigest()[:16]
