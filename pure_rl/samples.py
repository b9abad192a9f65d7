"""What the policy writes, kept: ``RUN/samples.jsonl``, every response of an iteration at ``log.sample_every``.

One JSON object per response: ``iteration``, ``question``, ``steps`` (the step texts as written and scored,
separators included), ``prm`` (each step's PRM reward, the env's, so a step the PRM never scored reads 0),
``correct`` (the verifier's verdict on the final answer). The train log prints the first of them; experiments
read the mechanism of a curve from the file (what a policy writes at the start, middle and end, and what the PRM
pays for it).
"""

from __future__ import annotations

import json
from pathlib import Path

from tensordict import TensorDictBase

__all__ = ["append_samples", "format_response", "read_samples", "sample_records", "truncate_samples"]


def sample_records(traj: TensorDictBase) -> list[dict]:
    """One record per episode of a ``[B, K]`` trajectory batch: ``question``, ``steps`` (as written and scored,
    separators included), ``prm`` and ``correct`` (see the module docstring; the caller adds ``iteration``)."""
    from pure_rl.token_batch import valid_step_mask

    mask = valid_step_mask(traj)
    texts = traj.get("step_text").tolist()
    questions = traj.get("question").tolist()
    scores = traj.get(("next", "prm_reward")).reshape(traj.shape).float()
    verdict = traj.get(("next", "verifier_reward")).reshape(traj.shape)
    records = []
    for b in range(traj.shape[0]):
        n = int(mask[b].sum())
        records.append(
            {
                "question": questions[b][0],
                "steps": texts[b][:n],
                "prm": scores[b, :n].tolist(),
                "correct": bool(verdict[b, n - 1] > 0.5),  # the verifier rewards the episode's last step only
            }
        )
    return records


def format_response(record: dict, width: int = 200) -> str:
    """A record as the train log shows it: each step with its PRM score, then the verdict."""
    lines = [f"  [{s:+.2f}] {t.strip()[:width]!r}" for t, s in zip(record["steps"], record["prm"])]
    return "\n".join([*lines, f"  verifier: {'correct' if record['correct'] else 'wrong'}"])


def append_samples(path: str | Path, records: list[dict]) -> None:
    with Path(path).open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def start_middle_end(records: list[dict]) -> list[int]:
    """The first, middle and last iteration that ``records`` sample (fewer when they sample fewer)."""
    iterations = sorted({r["iteration"] for r in records})
    if not iterations:
        return []
    return list(dict.fromkeys([iterations[0], iterations[len(iterations) // 2], iterations[-1]]))


def read_samples(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def truncate_samples(path: str | Path, last_iteration: int) -> None:
    """Drop records of iterations after ``last_iteration`` (a resumed run writes those iterations again)."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_samples(path) if r["iteration"] <= last_iteration]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
