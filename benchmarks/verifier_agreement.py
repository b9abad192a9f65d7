"""MathVerifier's agreement with 800 externally labelled real model outputs (math-evaluation-harness grader).

Run: ``python benchmarks/verifier_agreement.py``. Prints the agreement rate, the time per check, and every
disagreement with the boxed answer it extracted, so each can be studied rather than tuned away.
"""

from __future__ import annotations

import json
import time

from envs.datasets import DATA_DIR
from envs.verifier import MathVerifier


def main() -> None:
    verifier = MathVerifier()
    rows = [json.loads(line) for line in (DATA_DIR / "verifier" / "math_cot_100.jsonl").open()]
    pairs = [(r["idx"], code, r["gt"], label) for r in rows for code, label in zip(r["code"], r["score"])]
    t0 = time.perf_counter()
    verdicts = [verifier.verify(code, gt) for _, code, gt, _ in pairs]
    seconds = time.perf_counter() - t0
    agree = sum(v == label for v, (_, _, _, label) in zip(verdicts, pairs))
    print(
        f"agreement with harness labels: {agree}/{len(pairs)} = {agree / len(pairs):.2%} "
        f"({sum(p[3] for p in pairs)} labelled correct; {seconds / len(pairs) * 1e3:.1f} ms per check)"
    )
    for v, (idx, code, gt, label) in zip(verdicts, pairs):
        if v != label:
            print(f"  question {idx}: reference {gt!r}, boxed {verifier.extract(code)!r}, harness {label}, ours {v}")


if __name__ == "__main__":
    main()
