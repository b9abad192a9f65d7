"""Learned PRMs: the step-label schema and converters, metrics, Monte-Carlo labels, training, resume, and the
trained PRM used by RL and by best-of-N."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pure_rl.config import ConfigError
from pure_rl.prm.labels import LabelError, StepLabels, convert_file, read_step_labels, write_step_labels
from pure_rl.prm.metrics import first_error_f1, prm_metrics, roc_auc, step_accuracy, within_problem_pairs

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- schema -------------------------------------------------------------------------------------------------


def test_schema_round_trip_and_optional_fields(tmp_path):
    rows = [
        StepLabels("q1", ["a", "b"], [1.0, 0.0], id="x", answer="3", source="t", extra={"k": 1}),
        StepLabels("q2", ["a", "b", "c"], [0.75, None, 1.0]),
    ]
    write_step_labels(rows, tmp_path / "l.jsonl")
    back = read_step_labels(tmp_path / "l.jsonl")
    assert [r.to_json() for r in back[:1]] == [rows[0].to_json()]
    assert back[1].labels == [0.75, None, 1.0] and back[1].id == "l.jsonl:2"  # file and line when no id
    assert back[0].first_error == 1 and back[1].first_error == -1


@pytest.mark.parametrize(
    "row,message",
    [
        ({"steps": ["a"], "labels": [1]}, "missing field 'question'"),
        ({"question": "q", "steps": [], "labels": []}, "'steps' must be a non-empty list"),
        ({"question": "q", "steps": ["a", "b"], "labels": [1]}, "one label per step \\(2\\), got 1"),
        ({"question": "q", "steps": ["a"], "labels": [2]}, "labels\\[0\\] = 2"),
        ({"question": "q", "steps": ["a"], "labels": [True]}, "labels\\[0\\] = True"),
        ({"question": "q", "steps": ["a"], "labels": [None]}, "no step is labelled"),
    ],
)
def test_schema_errors_name_file_line_and_field(tmp_path, row, message):
    good = {"question": "q", "steps": ["a"], "labels": [1]}
    path = _write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(LabelError, match=f"bad.jsonl, line 2: .*{message}"):
        read_step_labels(path)


def test_schema_missing_file_and_bad_json(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        read_step_labels(tmp_path / "nope.jsonl")
    (tmp_path / "j.jsonl").write_text('{"question": "q",\n')
    with pytest.raises(LabelError, match="line 1: not valid JSON"):
        read_step_labels(tmp_path / "j.jsonl")


# --- converters (hand-made samples of each published format) ------------------------------------------------

PRM800K_ROWS = [
    {  # the labeller followed chosen completions, then found an error (chosen_completion null at the last step)
        "labeler": "l1",
        "question": {"problem": "What is 2+3?", "ground_truth_answer": "5"},
        "label": {
            "steps": [
                {"completions": [{"text": "We add.", "rating": 0}], "human_completion": None, "chosen_completion": 0},
                {
                    "completions": [{"text": "2+3=5.", "rating": 1}, {"text": "2+3=6.", "rating": -1}],
                    "human_completion": None,
                    "chosen_completion": 0,
                },
                {
                    "completions": [{"text": "So 6.", "rating": -1}, {"text": "So 5.", "rating": 1}],
                    "human_completion": None,
                    "chosen_completion": None,
                },
            ],
            "finish_reason": "found_error",
        },
    },
    {  # a human completion replaces the model's step
        "question": {"problem": "What is 1+1?", "ground_truth_answer": "2"},
        "label": {
            "steps": [
                {
                    "completions": [{"text": "1+1=3.", "rating": -1}],
                    "human_completion": {"text": "1+1=2.", "rating": None},
                    "chosen_completion": None,
                },
                {
                    "completions": [{"text": "\\boxed{2}", "rating": 1}],
                    "human_completion": None,
                    "chosen_completion": 0,
                },
            ],
            "finish_reason": "solution",
        },
    },
    {"question": {"problem": "Bad."}, "label": {"steps": [], "finish_reason": "bad_problem"}},
]

MATH_SHEPHERD_ROWS = [
    {
        "input": "Tom has 3 apples and buys 4. How many? Step 1: 3 + 4 = 7. ки\nStep 2: The answer is: 7 ки",
        "label": "Tom has 3 apples and buys 4. How many? Step 1: 3 + 4 = 7. +\nStep 2: The answer is: 7 +",
        "task": "GSM8K",
    },
    {
        "input": "What is 2*5? Step 1: 2 * 5 = 12. ки\nStep 2: So 12 - 1 = 11. ки\nStep 3: The answer is: 11 ки",
        "label": "What is 2*5? Step 1: 2 * 5 = 12. -\nStep 2: So 12 - 1 = 11. +\nStep 3: The answer is: 11 -",
        "task": "MATH",
    },
]


def test_prm800k_converter(tmp_path):
    src = _write(tmp_path / "prm800k.jsonl", PRM800K_ROWS)
    written, skipped = convert_file("prm800k", src, tmp_path / "out.jsonl")
    assert (written, skipped) == (2, 1)
    a, b = read_step_labels(tmp_path / "out.jsonl")
    assert a.question == "What is 2+3?" and a.answer == "5"
    assert a.steps == ["We add.", "2+3=5.", "So 6."] and a.labels == [1.0, 1.0, 0.0]  # neutral -> 1, the -1 ends it
    assert b.steps == ["1+1=2.", "\\boxed{2}"] and b.labels == [1.0, 1.0]


def test_prm800k_converter_rejects_another_format(tmp_path):
    src = _write(tmp_path / "x.jsonl", MATH_SHEPHERD_ROWS)
    with pytest.raises(LabelError, match=r"x.jsonl, line 1: not a PRM800K row"):
        convert_file("prm800k", src, tmp_path / "out.jsonl")


def test_math_shepherd_converter(tmp_path):
    src = _write(tmp_path / "ms.jsonl", MATH_SHEPHERD_ROWS)
    assert convert_file("math_shepherd", src, tmp_path / "out.jsonl") == (2, 0)
    a, b = read_step_labels(tmp_path / "out.jsonl")
    assert a.question == "Tom has 3 apples and buys 4. How many?"
    assert a.steps == ["Step 1: 3 + 4 = 7.", "Step 2: The answer is: 7"] and a.labels == [1.0, 1.0]
    assert b.labels == [0.0, 1.0, 0.0] and b.steps[1] == "Step 2: So 12 - 1 = 11."
    broken = dict(MATH_SHEPHERD_ROWS[0], label=MATH_SHEPHERD_ROWS[0]["label"].replace("+", "?"))
    with pytest.raises(LabelError, match="line 1: step 1: expected"):
        convert_file("math_shepherd", _write(tmp_path / "b.jsonl", [broken]), tmp_path / "o.jsonl")


# --- metrics ------------------------------------------------------------------------------------------------


def test_auc_equals_pairwise_count():
    rng = random.Random(0)
    scores = [[rng.uniform(-1, 1) for _ in range(rng.randint(1, 5))] for _ in range(30)]
    labels = [[rng.choice([0.0, 1.0, 0.8, None]) for _ in row] for row in scores]
    pos = [s for rs, rl in zip(scores, labels) for s, y in zip(rs, rl) if y is not None and y >= 0.5]
    neg = [s for rs, rl in zip(scores, labels) for s, y in zip(rs, rl) if y is not None and y < 0.5]
    expected = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc([[0.1, 0.2]], [[1, 1]]) != roc_auc([[0.1, 0.2]], [[1, 1]])  # NaN with one class


def test_step_accuracy_and_first_error_f1_by_hand():
    scores = [[0.9, -0.5, 0.2], [0.8, 0.7], [0.5, 0.6], [-0.1, 0.3]]
    labels = [[1, 0, None], [1, 1], [1, 0], [1, 1]]
    # Labelled steps: 0.9/1 ok, -0.5/0 ok, 0.8/1, 0.7/1, 0.5/1 ok, 0.6/0 wrong, -0.1/1 wrong, 0.3/1 ok: 6 of 8.
    assert step_accuracy(scores, labels) == pytest.approx(6 / 8)
    f1 = first_error_f1(scores, labels)
    # Erroneous solutions (first errors 1, 1): predicted 1 and -1 -> 1/2. Correct ones: predicted -1 and 0 -> 1/2.
    assert f1["first_error_accuracy_erroneous"] == 0.5 and f1["first_error_accuracy_correct"] == 0.5
    assert f1["first_error_f1"] == pytest.approx(0.5)
    assert prm_metrics(scores, labels)["labelled_steps"] == 8


# --- Monte-Carlo labels: the rule on a scripted policy ------------------------------------------------------


class ScriptedBackend:
    """Generation by rule (a test double of the GenerationBackend protocol): the solution is SOLUTION; a
    completion continues a prefix correctly only while the prefix holds no wrong equation, and alternates
    right and wrong answers after the filler step alone."""

    SOLUTION = ("Let me think.\n\n", "2 + 3 = 6.\n\n", "So \\boxed{6}.")

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.prompt_len = None

    def generate(self, prompts, budgets, *, stop_at_step, stop_at_answer=False, seeds=None):
        from agents.generation import Generation

        out = []
        for p in prompts:
            prefix = self.tokenizer.decode(p[self.prompt_len :])
            if not prefix:
                text = "".join(self.SOLUTION)
            elif "= 6" in prefix:
                text = "So \\boxed{6}."
            else:
                self.calls += 1
                text = "2 + 3 = 5.\n\nSo \\boxed{5}." if self.calls % 2 else "So \\boxed{7}."
            out.append(Generation([*self.tokenizer.encode(text), self.tokenizer.eos_token_id], "eos"))
        return out


class ScriptedPolicy:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = ScriptedBackend(tokenizer)
        self.eos_token_ids = self.backend.eos_token_ids

    def prompt_ids(self, prompt):
        ids = self.tokenizer.encode(prompt)
        self.backend.prompt_len = len(ids)
        return ids


@pytest.mark.parametrize("mode,expected", [("hard", [1.0, 0.0, 0.0]), ("soft", [0.5, 0.0, 0.0])])
def test_monte_carlo_labels_follow_the_rule(tiny_tokenizer, mode, expected):
    from envs.tasks import Problem
    from envs.verifier import MathVerifier
    from pure_rl.config import load_config
    from pure_rl.prm.monte_carlo import label_problem

    cfg = load_config(
        ROOT / "configs/prm/tiny.yaml", ["prm.label_samples=1", "prm.label_rollouts=2", f"prm.label_mode={mode}"]
    )
    problem = Problem("What is 2 + 3?", "5", "p0")
    (row,) = label_problem(ScriptedPolicy(tiny_tokenizer), MathVerifier(), problem, "What is 2 + 3?", cfg, seed=0)
    assert row.steps == list(ScriptedBackend.SOLUTION)
    # The filler step keeps the answer reachable (one completion of two reaches 5); the wrong equation does not;
    # the last step is the solution's own verdict (6: wrong).
    assert row.labels == expected
    assert row.extra["solution_correct"] is False and row.extra["problem_id"] == "p0"


# --- labelling, training and use, end to end on the tiny models ---------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, warm_tiny_path):
    from pure_rl.config import load_config
    from pure_rl.prm.monte_carlo import label_with_policy

    out = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    cfg = load_config(ROOT / "configs/prm/tiny.yaml", [f"policy.model={warm_tiny_path}", "warmup.steps=0"])
    summary = label_with_policy(cfg, out, progress=False)
    return cfg, out, summary


def test_label_writes_schema_rows_and_resumes(labelled, tmp_path):
    from pure_rl.config import load_config
    from pure_rl.prm.monte_carlo import label_with_policy

    cfg, out, summary = labelled
    rows = read_step_labels(out)
    assert summary["solutions"] == len(rows) > 0 and summary["problems_labelled"] == cfg.prm.label_problems
    for r in rows:
        assert all(v in (0.0, 1.0) for v in r.labels)  # hard labels
        assert r.labels[-1] == float(r.extra["solution_correct"])
    # A copy extended to more problems labels only the new ones, and the old rows are kept as they were.
    copy = tmp_path / "labels.jsonl"
    copy.write_text(out.read_text())
    (tmp_path / "labels.jsonl.meta.json").write_text(Path(str(out) + ".meta.json").read_text())
    more = load_config(
        ROOT / "configs/prm/tiny.yaml", [f"policy.model={cfg.policy.model}", "warmup.steps=0", "prm.label_problems=8"]
    )
    again = label_with_policy(more, copy, progress=False)
    assert again["problems_labelled"] == 2
    assert copy.read_text().startswith(out.read_text())
    # Other settings are refused, never mixed into the file.
    other = load_config(
        ROOT / "configs/prm/tiny.yaml", [f"policy.model={cfg.policy.model}", "warmup.steps=0", "prm.label_rollouts=3"]
    )
    with pytest.raises(LabelError, match="other settings \\(labels differ"):
        label_with_policy(other, copy, progress=False)
    # Every env setting that changes a label is checked: another reference-answer field, another prompt.
    for change in ("env.answer_field=solution", "env.max_tokens=40"):
        moved = load_config(
            ROOT / "configs/prm/tiny.yaml", [f"policy.model={cfg.policy.model}", "warmup.steps=0", change]
        )
        with pytest.raises(LabelError, match="other settings \\(env differ"):
            label_with_policy(moved, copy, progress=False)


def test_two_labellers_into_one_file_are_refused(tmp_path):
    from pure_rl.run_dir import RunDirError, RunLock

    out = tmp_path / "labels.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom pure_rl.run_dir import RunLock\n"
         f"with RunLock.for_file(Path({str(out)!r})):\n    print('held', flush=True)\n    time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"{out.name} is in use by process {holder.pid}"):
            with RunLock.for_file(out):
                pass
    finally:
        holder.kill()
        holder.wait()


def _synthetic_rows(n: int, seed: int) -> list[StepLabels]:
    """Steps whose label is written in them ("good" / "bad"): a PRM that trains learns it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(1, 4)):
            good = rng.random() < 0.5
            steps.append(f"{rng.randint(1, 99)} + {rng.randint(1, 99)} is {'good' if good else 'bad'}.\n\n")
            labels.append(float(good))
        rows.append(StepLabels(f"Question {i}?", steps, labels, id=str(i), extra={"problem_id": f"p{i}"}))
    return rows


def _train_cfg(tiny_model_path, *extra):
    from pure_rl.config import load_config

    return load_config(
        ROOT / "configs/prm/tiny.yaml",
        [
            f"prm.base_model={tiny_model_path}",
            "prm.steps=40",
            "prm.batch_size=8",
            "prm.lr=3e-3",
            "prm.heldout_share=0.25",
            "prm.eval_every=20",
            "prm.checkpoint_every=10",
            *extra,
        ],
    )


@pytest.mark.parametrize("layout", ["pure_text", "qwen"])
def test_trainer_learns_held_out_steps(tmp_path, tiny_model_path, layout):
    from envs.prm import HFTokenClassificationPRM
    from pure_rl.prm.trainer import split_by_problem, train_prm

    rows = _synthetic_rows(80, 0)
    cfg = _train_cfg(tiny_model_path, f"prm.layout={layout}")
    summary = train_prm(cfg, rows, tmp_path / "prm", progress=False)
    assert summary["heldout_before"]["step_auc"] < 0.75
    assert summary["heldout_after"]["step_auc"] > 0.95
    assert summary["heldout_after"]["step_accuracy"] > 0.9
    assert summary["train_rows"] == 60 and summary["heldout_rows"] == 20  # split by problem
    assert (tmp_path / "prm" / "logs" / "scalars" / "prm_loss.csv").is_file()
    assert not (tmp_path / "prm" / "checkpoint.pt").exists()  # the saved model is the result
    # The saved folder, loaded as RL loads it, scores the held-out steps as the trainer measured.
    prm = HFTokenClassificationPRM(tmp_path / "prm", layout=layout)
    _, held = split_by_problem(rows, cfg.prm.heldout_share, cfg.train.seed)
    scores = prm([r.question for r in held], [r.steps for r in held])
    assert roc_auc(scores, [r.labels for r in held]) == pytest.approx(summary["heldout_after"]["step_auc"])
    # The folder keeps its held-out solutions: `pure_rl.prm evaluate` measures them again, in any precision.
    assert read_step_labels(tmp_path / "prm" / "heldout.jsonl") == held
    from pure_rl.prm.__main__ import main as prm_main

    again = ["evaluate", "--prm", str(tmp_path / "prm"), "--labels", str(tmp_path / "prm" / "heldout.jsonl")]
    assert prm_main([*again, "--layout", layout])["step_auc"] == pytest.approx(summary["heldout_after"]["step_auc"])
    bf16 = prm_main([*again, "--layout", layout, "--dtype", "bfloat16"])["step_auc"]
    assert bf16 == pytest.approx(summary["heldout_after"]["step_auc"], abs=0.05)


def test_a_prm_on_the_backbones_first_layers_keeps_them_and_loads_at_that_depth(tmp_path, tiny_model_path):
    # prm.backbone_layers=N: the first N transformer layers and the final norm as the backbone had them, the
    # rest dropped; the saved folder loads at depth N and scores as the trainer measured.
    from transformers import AutoModelForCausalLM

    from envs.prm import HFTokenClassificationPRM
    from pure_rl.prm.trainer import load_backbone, split_by_problem, train_prm

    full = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    depth = full.config.num_hidden_layers
    assert depth >= 2
    model, _, _ = load_backbone(str(tiny_model_path), "pure_text", layers=1)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    kept, original = model.model.layers[0].state_dict(), full.model.layers[0].state_dict()
    assert kept.keys() == original.keys()
    assert all(torch.equal(kept[k], original[k]) for k in kept)
    assert torch.equal(model.model.norm.weight, full.model.norm.weight)
    with pytest.raises(ConfigError, match=rf"backbone_layers={depth + 1}: .* has only {depth} layers"):
        load_backbone(str(tiny_model_path), "pure_text", layers=depth + 1)

    rows = _synthetic_rows(40, 2)
    cfg = _train_cfg(tiny_model_path, "prm.backbone_layers=1", "prm.steps=20")
    summary = train_prm(cfg, rows, tmp_path / "prm", progress=False)
    assert summary["backbone_layers"] == 1
    prm = HFTokenClassificationPRM(tmp_path / "prm", layout="pure_text")
    assert len(prm.model.model.layers) == 1
    _, held = split_by_problem(rows, cfg.prm.heldout_share, cfg.train.seed)
    scores = prm([r.question for r in held], [r.steps for r in held])
    assert roc_auc(scores, [r.labels for r in held]) == pytest.approx(summary["heldout_after"]["step_auc"])


def test_trainer_resumes_exactly(tmp_path, tiny_model_path, monkeypatch):
    from transformers import AutoModelForTokenClassification

    from pure_rl.loggers import RunLoggers
    from pure_rl.prm.trainer import train_prm

    rows = _synthetic_rows(40, 1)
    cfg = _train_cfg(tiny_model_path, "prm.steps=20")
    train_prm(cfg, rows, tmp_path / "whole", progress=False)

    original = RunLoggers.log_scalar

    def interrupt(self, name, value, step):
        if name == "prm_loss" and step == 13:
            raise KeyboardInterrupt
        original(self, name, value, step)

    monkeypatch.setattr(RunLoggers, "log_scalar", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_prm(cfg, rows, tmp_path / "cut", progress=False)
    monkeypatch.setattr(RunLoggers, "log_scalar", original)
    with pytest.raises(Exception, match="already holds a run"):
        train_prm(cfg, rows, tmp_path / "cut", progress=False)
    with pytest.raises(LabelError, match="labels differ"):
        train_prm(cfg, rows[:-1], tmp_path / "cut", resume=True, progress=False)
    train_prm(cfg, rows, tmp_path / "cut", resume=True, progress=False)
    lines = (tmp_path / "cut" / "logs" / "scalars" / "prm_loss.csv").read_text().split()
    steps = [int(float(line.split(",")[0])) for line in lines]
    assert steps == list(range(1, 21))  # the steps trained again after the checkpoint are logged once
    a = AutoModelForTokenClassification.from_pretrained(tmp_path / "whole").state_dict()
    b = AutoModelForTokenClassification.from_pretrained(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained_prm(tmp_path_factory, labelled):
    from pure_rl.prm.trainer import train_prm

    cfg, out, _ = labelled
    folder = tmp_path_factory.mktemp("prm") / "model"
    train_prm(cfg, read_step_labels(out), folder, progress=False)
    return folder


def test_trained_prm_loads_as_env_prm_and_trains_a_policy(trained_prm, warm_tiny_path, tmp_path):
    from envs import make_prm
    from pure_rl.config import load_config
    from pure_rl.train import main

    overrides = ["env.prm=hf", f"env.prm_model={trained_prm}", "env.prm_layout=pure_text"]
    prm = make_prm(load_config(ROOT / "configs/tiny.yaml", overrides))
    assert prm.prefix_causal and len(prm(["q"], [["1 + 1 = 2.\n\n", "\\boxed{2}"]])[0]) == 2
    summary = main(
        [
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            "--run-dir",
            str(tmp_path / "run"),
            f"policy.model={warm_tiny_path}",
            *overrides,
        ]
    )
    assert summary["iterations"] == 2 and -1 <= summary["prm_reward_mean"]["last"] <= 1
    assert summary["prm_reward_mean"]["last"] != 0  # the learned PRM scored the steps


def test_prm_cli_train_and_evaluate(labelled, tmp_path):
    from pure_rl.prm.__main__ import main

    cfg, out, _ = labelled

    def train(labels, folder, *overrides):
        config = str(ROOT / "configs/prm/tiny.yaml")
        return main(["train", "--config", config, "--labels", str(labels), "--out", str(tmp_path / folder), *overrides])

    start = [f"policy.model={cfg.policy.model}", "warmup.steps=0"]
    result = train(out, "m", *start)
    assert result["use_it"].startswith("env.prm=hf env.prm_model=")
    metrics = main(["evaluate", "--prm", str(tmp_path / "m"), "--labels", str(out)])
    assert metrics["labelled_steps"] == sum(len(r.labels) for r in read_step_labels(out))
    with pytest.raises(SystemExit, match=r"step labels: .*does not exist"):
        train(tmp_path / "none.jsonl", "n")
    # A depth the backbone lacks is a setting to fix, reported as one and before any training starts.
    with pytest.raises(SystemExit, match=r"config error: prm.backbone_layers=99: .* has only \d+ layers"):
        train(out, "deep", *start, "prm.backbone_layers=99")
    assert not (tmp_path / "deep" / "checkpoint.pt").exists()


# --- best-of-N ----------------------------------------------------------------------------------------------


def test_best_of_n_selection_by_hand():
    from pure_rl.best_of_n import best_of_n, within_problem_accuracy

    def s(problem, scores, answer, correct):
        return {"problem": problem, "scores": scores, "answer": answer, "correct": correct}

    samples = [
        s(0, [0.9, -0.8], "3", False),
        s(0, [0.2, 0.3], "4", True),
        s(0, [0.95, 0.9, -0.2], "3", False),
        s(0, [0.1], None, False),
        s(1, [0.5], "7", True),
        s(1, [0.6], "7", True),
        s(1, [0.4], "8", False),
        s(1, [0.7], "8", False),
    ]
    t = best_of_n(samples, ["min", "last", "mean", "prod"], 4)
    assert list(t) == [1, 2, 4]
    # Problem 0: min and last pick [0.2, 0.3] (right), mean picks [0.95, 0.9, -0.2], prod the one-step 0.1
    # response (probabilities (s + 1) / 2: 0.55 beats 0.6 * 0.65); problem 1: every aggregation picks 0.7 (wrong).
    assert (t[4]["min"], t[4]["last"], t[4]["mean"], t[4]["prod"]) == (0.5, 0.5, 0.0, 0.0)
    assert t[4]["pass"] == 1.0 and t[4]["random"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert t[4]["majority"] == 0.5  # problem 0: "3" twice (wrong); problem 1: 7 and 8 tie, 7 first (right)
    # n = 2: two disjoint pairs per problem, averaged; only the first pair of each problem holds a right answer.
    assert t[2]["pass"] == 0.5 and t[2]["min"] == 0.5 and t[1]["random"] == t[4]["random"]
    with pytest.raises(ValueError, match="unknown aggregation"):
        best_of_n(samples, ["max"], 4)
    # Pairs (correct, wrong) within a problem: problem 0 has 1 x 3, problem 1 has 2 x 2. min: 0.2 beats -0.8,
    # -0.2, 0.1 (3 of 3); problem 1: 0.5 and 0.6 against 0.4 (win) and 0.7 (loss): 2 of 4. (3 + 2) / 7.
    pairs = within_problem_accuracy(samples, ["min", "mean"])
    assert pairs["min"] == pytest.approx(5 / 7)
    assert pairs["mean"] == pytest.approx((2 + 2) / 7)  # 0.25 beats 0.05 and 0.1, loses to 0.55


def test_best_of_n_cli_on_the_tiny_config(trained_prm, warm_tiny_path, tmp_path):
    from pure_rl.evaluate import main

    result = main(
        [
            "--config",
            str(ROOT / "configs/prm/tiny.yaml"),
            "--best-of",
            "4",
            "--problems",
            "3",
            "--best-of-batch",
            "8",  # two problems per rollout: the held-out order must continue across rollouts
            "--out",
            str(tmp_path / "bon"),
            f"policy.model={warm_tiny_path}",
            "warmup.steps=0",
            "env.prm=hf",
            f"env.prm_model={trained_prm}",
            "env.prm_layout=pure_text",
        ]
    )
    table = dict(result["best_of_n"])
    assert set(table.pop("within_problem_accuracy")) == {"min", "last", "prod", "mean"}
    assert list(table) == ["1", "2", "4"] and set(table["1"]) == {
        "min",
        "last",
        "prod",
        "mean",
        "majority",
        "pass",
        "random",
    }
    assert table["4"]["pass"] >= table["1"]["pass"]
    saved = json.loads((tmp_path / "bon" / "best_of_n.json").read_text())
    assert len(saved["samples"]) == 12 and (tmp_path / "bon" / "best_of_n.png").is_file()
    assert sorted({s["problem"] for s in saved["samples"]}) == [0, 1, 2]  # every problem once, 4 samples each
    # The env scored each response as the PRM scores its question and steps read back (`pure_rl.prm evaluate`'s
    # path, the one held-out step metrics come from): best-of-N and those metrics measure the same PRM.
    from envs.prm import HFTokenClassificationPRM

    prm = HFTokenClassificationPRM(str(trained_prm), layout="pure_text", dtype=torch.float32)
    samples = saved["samples"]
    direct = prm([s["question"] for s in samples], [s["steps"] for s in samples])
    assert all(len(s["steps"]) == len(s["scores"]) >= 1 for s in samples)
    for s, d in zip(samples, direct):
        assert d == pytest.approx(s["scores"], abs=1e-4)


def test_step_labels_with_line_separator_characters_survive_their_own_reader(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 / U+2029 raw; str.splitlines() would cut such a row in two.
    rows = [StepLabels("q\u2028one", ["a\u2029b", "c"], [1.0, 0.0], id="x"), StepLabels("q2", ["d"], [1.0])]
    path = tmp_path / "labels.jsonl"
    write_step_labels(rows, path)
    assert "\u2028" in path.read_text()
    back = read_step_labels(path)
    assert [(r.question, r.steps, r.labels) for r in back] == [(r.question, r.steps, r.labels) for r in rows]


def test_convert_never_replaces_a_file(tmp_path):
    src = _write(tmp_path / "prm800k.jsonl", PRM800K_ROWS)
    before = src.read_text()
    with pytest.raises(LabelError, match="is the source file"):
        convert_file("prm800k", src, src)
    existing = tmp_path / "labels.jsonl"
    existing.write_text('{"mine": 1}\n')
    with pytest.raises(LabelError, match="already exists: pure-rl never replaces a file"):
        convert_file("prm800k", src, existing)
    assert src.read_text() == before and existing.read_text() == '{"mine": 1}\n'


def test_prm_training_refuses_a_folder_holding_another_model(tmp_path):
    from pure_rl.run_dir import RunDirError, claim_new_run

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(RunDirError, match=r"holds files pure-rl did not write \(config\.json, model\.safetensors\)"):
        claim_new_run(folder, overwrite=True, writes=("config.json", "*.safetensors"))
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    claim_new_run(tmp_path / "empty", writes=("config.json", "*.safetensors"))  # a new folder is fine


def test_within_problem_pairs_compares_only_solutions_to_the_same_problem():
    # Problem a: correct min 0.2 beats wrong min -0.3; problem b: correct min -0.5 loses to 0.1 and ties -0.5.
    scores = [[0.5, 0.2], [0.9, -0.3], [-0.5], [0.1], [-0.5, 0.4], [0.8], [0.9]]
    correct = [True, False, True, False, False, None, True]
    problems = ["a", "a", "b", "b", "b", "a", "c"]  # unknown correctness and a lone problem count for nothing
    assert within_problem_pairs(scores, correct, problems) == pytest.approx((1 + 0 + 0.5) / 3)
    # A PRM that knows only which problem is easy: pooled over problems it ranks half the pairs right, within
    # a problem none.
    easy_and_hard = [[0.9], [0.9], [0.95], [-0.5], [-0.4], [-0.4], [-0.4]]
    right = [True, True, False, True, False, False, False]
    assert roc_auc(easy_and_hard, [[float(ok)] for ok in right]) == pytest.approx(0.5)
    assert within_problem_pairs(easy_and_hard, right, "aaabbbb") == 0.0
    assert math.isnan(within_problem_pairs([[0.9], [0.9]], [True, True], "aa"))  # no pair to compare
    metrics = prm_metrics(scores, [[1.0] * len(r) for r in scores], correct=correct, problems=problems)
    assert metrics["within_problem_pairs"] == pytest.approx(1.5 / 3)
    assert "within_problem_pairs" not in prm_metrics(scores, [[1.0] * len(r) for r in scores])
