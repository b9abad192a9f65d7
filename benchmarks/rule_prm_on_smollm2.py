"""ArithmeticRulePRM on real SmolLM2-135M-Instruct answers: five arithmetic problems, greedy answers, each step
with its PRM score and the verifier's verdict.

Run: ``python benchmarks/rule_prm_on_smollm2.py [--problems 5] [--difficulty 1]``.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--difficulty", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()

    from agents import make_policy
    from envs import make_env
    from pure_rl.config import load_config
    from pure_rl.evaluate import greedy
    from pure_rl.rollout import collect
    from pure_rl.token_batch import valid_step_mask

    cfg = load_config(
        "configs/default.yaml",
        [
            f"env.difficulty={args.difficulty}",
            f"env.max_tokens={args.max_tokens}",
            "env.max_steps=12",
            "policy.backend=transformers",
        ],
    )
    env = make_env(cfg, split="eval", batch_size=args.problems)
    policy = make_policy(cfg)
    with greedy(policy), torch.no_grad():
        traj = collect(env, policy, "response")
    mask = valid_step_mask(traj)
    scores = traj.get(("next", "prm_reward")).reshape(traj.shape)
    verdict = traj.get(("next", "verifier_reward")).reshape(traj.shape)
    texts = traj.get("step_text").tolist()
    questions = traj.get("question").tolist()
    references = traj.get("reference").tolist()
    for i in range(args.problems):
        n = int(mask[i].sum())
        print(f"\n[{i + 1}] {questions[i][0]}  (reference {references[i][0]})")
        for k in range(n):
            print(f"    {scores[i, k].item():+.1f}  {texts[i][k].strip()!r}")
        print(
            f"    min {scores[i, :n].min().item():+.1f}, mean {scores[i, :n].mean().item():+.2f}, "
            f"verifier: {'correct' if verdict[i, n - 1] > 0.5 else 'wrong'}"
        )


if __name__ == "__main__":
    main()
