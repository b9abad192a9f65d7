"""``python -m pure_rl.prm``: label steps with the policy, train a PRM, convert published labels, score a PRM.

python -m pure_rl.prm label    --config configs/prm/tiny.yaml --out runs/prm/labels.jsonl
python -m pure_rl.prm train    --config configs/prm/tiny.yaml --labels runs/prm/labels.jsonl --out runs/prm/model
python -m pure_rl.prm convert  --format prm800k phase2_train.jsonl --out prm800k.jsonl
python -m pure_rl.prm evaluate --prm runs/prm/model --labels heldout.jsonl
python -m pure_rl.prm probe    --config configs/prm/tiny.yaml --labels runs/prm/labels.jsonl \
    env.prm=hf env.prm_model=runs/prm/model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args):
    from pure_rl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if args.own_process:
        from pure_rl.startup import import_torchrl_without_vllm

        import_torchrl_without_vllm(cfg.policy.backend)
    return cfg


def main(argv: list[str] | None = None, *, own_process: bool = False) -> dict:
    """The command line; ``own_process``: this process runs this one command and nothing after it."""
    from pure_rl.config import ConfigError
    from pure_rl.prm.labels import LabelError

    p = argparse.ArgumentParser(prog="python -m pure_rl.prm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("label", help="Monte-Carlo step labels from the config's policy (prm.label_* keys)")
    lab.add_argument("--config", required=True)
    lab.add_argument("--out", required=True, help="jsonl file to write (resumed when it holds the same settings')")
    lab.add_argument("--overwrite", action="store_true", help="replace labels made with other settings")
    tr = sub.add_parser("train", help="train a token-classification PRM (prm.* keys)")
    tr.add_argument("--config", required=True)
    tr.add_argument("--out", required=True, help="folder for the trained PRM (an HF model folder)")
    tr.add_argument("--labels", nargs="+", default=None, help="step-label jsonl files (default: prm.data)")
    tr.add_argument("--resume", action="store_true", help="continue the training in --out from its checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace a PRM training in --out")
    conv = sub.add_parser("convert", help="convert PRM800K / Math-Shepherd jsonl to the step-label schema")
    conv.add_argument("--format", required=True, choices=("prm800k", "math_shepherd"))
    conv.add_argument("source")
    conv.add_argument("--out", required=True)
    ev = sub.add_parser("evaluate", help="a trained PRM's step metrics on labelled solutions")
    ev.add_argument("--prm", required=True, help="the PRM folder")
    ev.add_argument("--labels", nargs="+", required=True)
    ev.add_argument("--layout", default="pure_text", choices=("pure_text", "qwen"))
    ev.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="as env.prm_dtype in RL"
    )
    probe = sub.add_parser(
        "probe", help="what the config's PRM (env.prm) pays for filler, restatements, repeats, answers, empty steps"
    )
    probe.add_argument("--config", required=True)
    probe.add_argument("--labels", nargs="+", required=True, help="labelled solutions; their held-out split is probed")
    probe.add_argument("--out", default=None, help="also write the table to OUT.json and OUT.md")
    for sp in (lab, tr, probe):
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. prm.steps=100")
    args = p.parse_args(argv)
    args.own_process = own_process
    try:
        if args.command == "label":
            from pure_rl.prm.monte_carlo import label_with_policy

            result = label_with_policy(_config(args), args.out, overwrite=args.overwrite)
        elif args.command == "train":
            from pure_rl.prm.labels import read_step_labels
            from pure_rl.prm.trainer import train_prm

            cfg = _config(args)
            rows = read_step_labels(args.labels or cfg.prm.data)
            result = train_prm(cfg, rows, args.out, resume=args.resume, overwrite=args.overwrite)
            result["use_it"] = f"env.prm=hf env.prm_model={args.out} env.prm_layout={cfg.prm.layout}"
        elif args.command == "probe":
            from envs.factory import make_prm
            from pure_rl.prm.hackability import format_table, hackability_table
            from pure_rl.prm.labels import read_step_labels
            from pure_rl.prm.trainer import split_by_problem

            cfg = _config(args)
            _, held = split_by_problem(read_step_labels(args.labels), cfg.prm.heldout_share, cfg.train.seed)
            result = hackability_table(make_prm(cfg), held, cfg.env.step_separator)
            print(format_table(result))
            if args.out:
                # Which PRM, in which dtype: a reader can tell a stale measurement from a current one.
                measured = {"prm": cfg.env.prm, "prm_model": cfg.env.prm_model, "prm_dtype": cfg.env.prm_dtype}
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(f"{args.out}.json").write_text(json.dumps({**measured, "probes": result}, indent=2))
                Path(f"{args.out}.md").write_text(format_table(result) + "\n")
        elif args.command == "convert":
            from pure_rl.prm.labels import convert_file

            written, skipped = convert_file(args.format, args.source, args.out)
            result = {"rows": written, "skipped_without_labels": skipped, "out": args.out}
        else:
            import torch

            from envs.prm import HFTokenClassificationPRM
            from pure_rl.prm.labels import read_step_labels
            from pure_rl.prm.metrics import prm_metrics

            rows = read_step_labels(args.labels)
            prm = HFTokenClassificationPRM(args.prm, layout=args.layout, dtype=getattr(torch, args.dtype))
            scores = prm([r.question for r in rows], [r.steps for r in rows])
            correct = [r.extra.get("solution_correct") for r in rows]
            problems = [r.extra.get("problem_id", r.question) for r in rows]
            result = prm_metrics(scores, [r.labels for r in rows], correct=correct, problems=problems)
    except LabelError as e:
        sys.exit(f"step labels: {e}")
    except ConfigError as e:  # a setting found wrong only once the model is open (prm.backbone_layers)
        sys.exit(f"config error: {e}")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(own_process=True)
