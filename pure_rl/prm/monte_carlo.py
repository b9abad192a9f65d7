"""Step labels from the policy itself, as Math-Shepherd makes them: ``python -m pure_rl.prm label``.

For each training problem the policy samples ``prm.label_samples`` solutions; from every step prefix of each
(all steps but the last) it samples ``prm.label_rollouts`` completions. A step is labelled correct when a
completion from it reaches the reference answer (``hard``), or with the share that do (``soft``); the last step
takes the verdict on the solution itself, which is its only completion. A label says whether the answer is still
reachable, not whether the step is right: a harmless step is labelled like the prefix before it, which is how
real PRMs come to score filler as safe (and how sum-form credit farms them). How often that happens depends on
the policy (docs/results.md measures it for the CPU recipe).

Generation runs on the configured policy backend (transformers or vLLM), from the configured starting model
(warmed up per the config's ``warmup`` section). Each problem's sampling is seeded by its position, and its
rows are appended to the output as soon as it is done, so a killed run resumes where it stopped (the settings
are kept beside the file, ``<out>.meta.json``; other settings are refused, never mixed in).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pure_rl.prm.labels import LabelError, StepLabels, write_step_labels

__all__ = ["label_key", "label_problem", "label_with_policy"]


# env keys that cannot change a Monte-Carlo label (the RL reward's PRM and mixing, the held-out set); every other
# env key can (the problems, their reference answers, the prompt, the budgets, the verifier), so it is checked.
_ENV_KEYS_OFF_LABELS = ("eval_dataset", "reward_mode", "vr_coef", "prm", "prm_model", "prm_layout", "prm_device",
                        "prm_dtype", "prm_batch_size")  # fmt: skip


def label_key(cfg, model: str) -> dict:
    """Everything the labels depend on (a resumed file must have been made with the same)."""
    from pure_rl.config import config_to_dict

    env = {k: v for k, v in config_to_dict(cfg)["env"].items() if k not in _ENV_KEYS_OFF_LABELS}
    pc, prm = cfg.policy, cfg.prm
    return {
        "model": str(model),
        "env": env,
        "sampling": [pc.backend, pc.temperature, pc.top_p],
        "seed": cfg.train.seed,
        "labels": [prm.label_samples, prm.label_rollouts, prm.label_mode],
    }


def label_problem(policy, verifier, problem, prompt: str, cfg, seed: int) -> list[StepLabels]:
    """Monte-Carlo step labels for the solutions the policy samples for one problem."""
    from envs.steps import split_token_steps

    backend, tok, env, prm = policy.backend, policy.tokenizer, cfg.env, cfg.prm
    if hasattr(backend, "generator"):
        backend.generator.manual_seed(seed)
    prompt_ids = policy.prompt_ids(prompt)
    solutions = backend.generate(
        [prompt_ids] * prm.label_samples, [env.max_tokens] * prm.label_samples, stop_at_step=False
    )
    requests, owners = [], []  # (input ids, budget), (solution, step)
    parsed = []
    for j, gen in enumerate(solutions):
        steps = split_token_steps(gen.token_ids, tok, env.step_separator, policy.eos_token_ids)[: env.max_steps]
        parsed.append(steps)
        prefix: list[int] = []
        for k, step in enumerate(steps[:-1]):
            prefix = prefix + list(step)
            budget = env.max_tokens - len(prefix)
            for _ in range(prm.label_rollouts):
                requests.append((prompt_ids + prefix, budget, prefix))
                owners.append((j, k))
    verdicts: dict[tuple[int, int], list[bool]] = {}
    for start in range(0, len(requests), prm.label_batch_size):
        chunk = requests[start : start + prm.label_batch_size]
        gens = backend.generate([r[0] for r in chunk], [r[1] for r in chunk], stop_at_step=False)
        for (_, _, prefix), owner, gen in zip(chunk, owners[start : start + len(chunk)], gens):
            text = tok.decode(prefix + list(gen.token_ids), skip_special_tokens=True)
            verdicts.setdefault(owner, []).append(bool(verifier.verify(text, problem.answer)))
    rows = []
    for j, steps in enumerate(parsed):
        if not steps:
            continue  # an empty response has no step to label
        texts = [tok.decode(s, skip_special_tokens=True) for s in steps]
        correct = bool(verifier.verify("".join(texts), problem.answer))
        labels = []
        for k in range(len(steps) - 1):
            hits = verdicts[(j, k)]
            labels.append(float(any(hits)) if prm.label_mode == "hard" else sum(hits) / len(hits))
        labels.append(float(correct))
        rows.append(
            StepLabels(
                question=problem.question,
                steps=texts,
                labels=labels,
                id=f"{problem.id}/s{j}",
                answer=problem.answer,
                source="monte_carlo",
                extra={"problem_id": problem.id, "solution_correct": correct, "rollouts": prm.label_rollouts},
            )
        )
    return rows


def _done_problems(out: Path) -> set[str]:
    done = set()
    for n, line in enumerate(out.read_text().split("\n"), 1):  # "\n" only: rows may hold U+2028
        if line.strip():
            try:
                done.add(json.loads(line)["problem_id"])
            except (json.JSONDecodeError, KeyError) as e:
                raise LabelError(f"{out}, line {n}: not a row this labeller wrote ({e}); use another --out") from e
    return done


def label_with_policy(cfg, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Label ``cfg.prm.label_problems`` training problems into ``out`` (jsonl), resuming what it holds.

    Returns a summary: problems, solutions and steps labelled, correct-step share, seconds.
    """
    from pure_rl.run_dir import RunLock

    out = Path(out)
    with RunLock.for_file(out):  # two labellers into one file would write every problem twice
        return _label_into(cfg, out, overwrite, progress)


def _label_into(cfg, out: Path, overwrite: bool, progress: bool) -> dict:
    from agents import make_policy
    from envs import make_source, make_verifier
    from envs.tasks import ProblemStream
    from pure_rl.warmup import warmed_up_model

    meta_path = out.with_name(out.name + ".meta.json")
    model = warmed_up_model(cfg)
    key = label_key(cfg, model)
    if out.exists() and not overwrite:
        old = json.loads(meta_path.read_text()).get("key") if meta_path.is_file() else None
        if old != key:
            changed = sorted(k for k in key if old is None or old.get(k) != key[k])
            raise LabelError(
                f"{out} holds labels made with other settings ({', '.join(changed)} differ, or no {meta_path.name}):"
                " choose another --out, or pass --overwrite to replace it"
            )
        done = _done_problems(out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
        done = set()
    meta_path.write_text(json.dumps({"key": key}, indent=2))

    policy = make_policy(cfg, model_name=model)
    verifier = make_verifier(cfg)
    stream = ProblemStream(make_source(cfg, "train"), seed=cfg.train.seed)  # the order RL reads them in
    problems = stream.next(cfg.prm.label_problems)
    if any(p.answer is None for p in problems):
        raise LabelError("Monte-Carlo labels need reference answers; this task's problems have none")
    todo = [(i, p) for i, p in enumerate(problems) if p.id not in done]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="labelling", dynamic_ncols=True)
    steps = correct = solutions = 0
    for i, problem in todo:
        rows = label_problem(
            policy,
            verifier,
            problem,
            cfg.env.prompt_template.format(question=problem.question),
            cfg,
            seed=cfg.train.seed * 1_000_003 + i,
        )
        write_step_labels(rows, out, append=True)
        solutions += len(rows)
        steps += sum(len(r.labels) for r in rows)
        correct += sum(sum(r.labels) for r in rows)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(steps=steps, correct=f"{correct / max(steps, 1):.2f}")
    if bar is not None:
        bar.close()
    return {
        "problems_labelled": len(todo),
        "problems_in_file": len(problems),
        "solutions": solutions,
        "steps": steps,
        "correct_step_share": correct / steps if steps else float("nan"),
        "seconds": time.perf_counter() - t0,
        "out": str(out),
    }
