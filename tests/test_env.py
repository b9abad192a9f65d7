"""ReasoningStepEnv: specs, episodes in each reward mode, budgets, groups, resume, estimator wiring."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict
from torchrl.envs.utils import check_env_specs

from envs import make_env
from envs.prm import PRMError, ProcessRewardModel
from envs.reasoning_env import ReasoningStepEnv
from envs.rule_prm import ArithmeticRulePRM
from envs.steps import split_text_steps
from envs.tasks import ArithmeticTask, Problem
from pure_rl.config import load_config
from pure_rl.objectives.estimators import MinFormEstimator
from pure_rl.rollout import rollout_responses

ARITH = ArithmeticTask(difficulty=1, seed=0)


class ListSource:
    """A fixed list of problems (some without a reference answer)."""

    def __init__(self, problems):
        self.problems = problems

    def __len__(self):
        return len(self.problems)

    def problem(self, index):
        return self.problems[index]


def action(texts, tokens=None, eos=None):
    n = len(texts)
    return TensorDict(
        {
            "step_text": NonTensorStack(*[NonTensorData(t) for t in texts]),
            "step_tokens": torch.tensor(tokens or [max(1, len(t.split())) for t in texts], dtype=torch.int64),
            "step_eos": torch.tensor(eos or [False] * n),
        },
        batch_size=[n],
    )


def run_episode(env, steps_per_env):
    """Step the env with scripted step texts; the last step of each env carries EOS. Returns the rollout."""

    k = max(len(s) for s in steps_per_env)

    def policy(td):
        i = policy.k
        policy.k += 1
        texts = [s[i] if i < len(s) else "" for s in steps_per_env]
        eos = [i >= len(s) - 1 for s in steps_per_env]
        td.update(action(texts, eos=eos))
        return td

    policy.k = 0
    return env.rollout(k, policy=policy, break_when_any_done=False, break_when_all_done=True)


@pytest.mark.parametrize("mode", ["prm+vr", "prm", "vr"])
@pytest.mark.parametrize("batch,group", [(1, 1), (4, 2), (6, 3)])
def test_check_env_specs(mode, batch, group):
    prm = None if mode == "vr" else ArithmeticRulePRM()
    env = ReasoningStepEnv(ARITH, prm, batch_size=batch, group_size=group, reward_mode=mode, max_steps=4)
    check_env_specs(env)


def two_problem_env(mode, **kw):
    problems = [Problem("What is 2 + 3?", "5", "p0"), Problem("What is 4 + 4?", "8", "p1")]
    prm = None if mode == "vr" else ArithmeticRulePRM(correct_score=1.0, wrong_score=-1.0, neutral_score=0.5)
    return ReasoningStepEnv(
        ListSource(problems), prm, batch_size=2, group_size=1, reward_mode=mode, max_steps=5, vr_coef=1.0, seed=0, **kw
    )


SCRIPT = [
    ["2 + 3 = 5.\n\n", "The answer is \\boxed{5}."],  # right answer, correct equation
    ["Let me think.\n\n", "4 + 4 = 9.\n\n", "So \\boxed{9}"],  # filler, wrong equation, wrong answer
]


def problem_order(env):
    env.reset()
    return [p.id for p in env.problems]


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("prm", [[1.0, 0.5], [0.5, -1.0, 0.5]]),
        ("vr", [[0.0, 1.0], [0.0, 0.0, 0.0]]),
        ("prm+vr", [[1.0, 0.5], [0.5, -1.0, 0.5 - 1.0]]),
    ],
)
def test_episode_rewards_per_mode(mode, expected):
    env = two_problem_env(mode)
    order = problem_order(env)
    env.set_seed(0)
    script = SCRIPT if order == ["p0", "p1"] else SCRIPT[::-1]
    exp = expected if order == ["p0", "p1"] else expected[::-1]
    td = run_episode(env, script)
    for i in range(2):
        n = len(script[i])
        assert td["next", "reward"][i, :n, 0].tolist() == pytest.approx(exp[i])
        assert td["next", "done"][i, :n, 0].tolist() == [False] * (n - 1) + [True]
        assert td["next", "terminated"][i, n - 1, 0] and not td["next", "truncated"][i, n - 1, 0]
        # The separate keys carry the PRM score and the verifier outcome whatever the mode.
        v = 1.0 if script[i][-1].endswith("\\boxed{5}.") else 0.0
        assert td["next", "verifier_reward"][i, n - 1, 0].item() == v
        if mode != "vr":
            assert td["next", "prm_reward"][i, :n, 0].tolist() == pytest.approx(
                [1.0, 0.5] if n == 2 else [0.5, -1.0, 0.5]
            )
        assert list(td["next", "response"])[i][n - 1] == "".join(script[i])


def test_step_and_token_budgets_truncate():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=2, max_steps=3, max_tokens=10)
    env.reset()
    out = env.step(action(["a\n\n", "b\n\n"], tokens=[2, 9]))["next"]
    assert out["done"].flatten().tolist() == [False, False]
    out = env.step(action(["a\n\n", "b\n\n"], tokens=[2, 1]))["next"]
    assert out["done"].flatten().tolist() == [False, True]  # 10 tokens reached
    assert out["truncated"].flatten().tolist() == [False, True] and not out["terminated"].any()
    out = env.step(action(["a\n\n", "b\n\n"], tokens=[2, 1]))["next"]
    assert out["done"].flatten().tolist() == [True, True]  # 3 steps reached
    assert out["truncated"].flatten().tolist() == [True, True]
    # Stepping a finished episode is a no-op: still done, zero reward, nothing appended.
    assert out["reward"][1].item() == 0.0 and out["step_count"][1].item() == 2


def test_truncated_response_without_answer_is_wrong_in_prm_vr():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(neutral_score=0.5), batch_size=1, max_steps=1)
    env.reset()
    out = env.step(action(["Let me think.\n\n"]))["next"]
    assert out["truncated"].item() and out["verifier_reward"].item() == 0.0
    assert out["reward"].item() == pytest.approx(0.5 - 1.0)


@pytest.mark.parametrize("end_at_answer", [False, True])
def test_end_at_answer_ends_the_episode_at_the_first_boxed_step(end_at_answer):
    problem = Problem("Tom has 3 apples. Then Tom gets 2 more. How many apples does Tom have now?", "5", "p")
    env = ReasoningStepEnv(ListSource([problem]), ArithmeticRulePRM(), batch_size=1, end_at_answer=end_at_answer)
    # A small model answers, then starts a new problem and boxes another number without EOS.
    script = [["3 + 2 = 5.\n\n", "The answer is \\boxed{5}.\n\n", "Problem: 2 + 2 = 4.\n\n", "\\boxed{4}"]]
    td = run_episode(env, script)
    n = 2 if end_at_answer else 4
    assert td["next", "done"][0, :, 0].tolist()[:n] == [False] * (n - 1) + [True]
    assert td["next", "terminated"][0, n - 1, 0] and not td["next", "truncated"][0, n - 1, 0]
    responses = list(td["next", "response"])
    assert responses[0][n - 1] == "".join(script[0][:n])
    # The verifier reads the last box of the response: the answer itself, or what the policy boxed after it.
    assert td["next", "verifier_reward"][0, n - 1, 0].item() == (1.0 if end_at_answer else 0.0)


def test_groups_share_questions_and_ids():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=6, group_size=3)
    td = env.reset()
    q = list(td["question"])
    assert q[0] == q[1] == q[2] and q[3] == q[4] == q[5] and q[0] != q[3]
    g = td["group_id"].tolist()
    assert g[0] == g[1] == g[2] != g[3] == g[4] == g[5]
    td2 = env.reset()
    assert set(td2["group_id"].tolist()).isdisjoint(g)  # a new batch, new groups


def test_partial_reset_must_cover_whole_groups():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=4, group_size=2)
    td = env.reset()
    before = list(td["question"])
    td.set("_reset", torch.tensor([[True], [True], [False], [False]]))
    after = list(env.reset(td)["question"])
    assert after[2:] == before[2:] and after[0] == after[1] != before[0]
    td.set("_reset", torch.tensor([[True], [False], [False], [False]]))
    with pytest.raises(ValueError, match="whole groups"):
        env.reset(td)


def test_no_reference_means_no_vr_term():
    problems = [Problem("Say something.", None, "free")]
    env = ReasoningStepEnv(ListSource(problems), ArithmeticRulePRM(), batch_size=1)
    td = env.reset()
    assert not td["has_reference"].item() and list(td["reference"]) == [""]
    out = env.step(action(["2 + 2 = 4"], eos=[True]))["next"]
    assert out["reward"].item() == 1.0 and not out["has_reference"].item()


class NaNPRM(ProcessRewardModel):
    def score(self, questions, steps):
        return [[math.nan] * len(s) for s in steps]


def test_prm_nan_is_a_clear_error():
    env = ReasoningStepEnv(ARITH, NaNPRM(), batch_size=1)
    env.reset()
    with pytest.raises(PRMError, match=r"NaN|nan"):
        env.step(action(["1 + 1 = 2\n\n"]))


def test_empty_step_is_scored_not_crashed():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(neutral_score=0.25), batch_size=1, reward_mode="prm")
    env.reset()
    out = env.step(action([""], tokens=[1], eos=[True]))["next"]
    assert out["terminated"].item() and out["reward"].item() == 0.25


def test_data_position_resumes():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=2, seed=5)
    env.reset()
    state = env.state_dict()
    expected = list(env.reset()["question"])
    env2 = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=2, seed=0)
    env2.load_state_dict(state)
    assert list(env2.reset()["question"]) == expected


def test_seed_changes_questions():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=2)
    env.set_seed(1)
    a = list(env.reset()["question"])
    env.set_seed(2)
    b = list(env.reset()["question"])
    env.set_seed(1)
    assert list(env.reset()["question"]) == a != b


def test_whole_response_and_stepwise_give_the_same_trajectory(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    texts = [
        "Ben starts with 4.\n\n4 - 4 = 0.\n\nThe answer is \\boxed{0}.",
        "Hmm.\n\n4 - 4 = 1.\n\nSo \\boxed{1}",
        "Tom has 3 + 4 = 7.\n\nThe answer is \\boxed{7}.",
        "a\n\nb\n\nc\n\nd\n\ne\n\nf",
    ]
    responses = [[*tok.encode(t), eos] for t in texts[:3]] + [tok.encode(texts[3])]
    kw = dict(batch_size=4, group_size=2, max_steps=4)
    env_a = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), **kw)
    whole = rollout_responses(env_a, responses, tok, [eos])
    env_b = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), **kw)
    stepwise = run_episode(env_b, [split_text_steps(t) for t in texts])
    k = whole.shape[1]
    for key in [
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
        ("next", "prm_reward"),
        ("next", "verifier_reward"),
        "step_count",
        "group_id",
    ]:
        torch.testing.assert_close(whole[key], stepwise[key][:, :k], msg=str(key))
    assert list(whole["step_text"]) == [list(row)[:k] for row in stepwise["step_text"]]
    # The step-budget (4) truncated the last response.
    assert whole["next", "truncated"][3, 3, 0]


def test_make_env_from_config_and_estimator_on_rollout():
    cfg = load_config("configs/tiny.yaml")
    env = make_env(cfg)
    assert env.batch_size[0] == cfg.train.prompts_per_iter * cfg.train.samples_per_prompt
    check_env_specs(env)
    td = run_episode(env, [["1 + 1 = 2.\n\n", "\\boxed{2}"], ["x\n\n", "y"], ["2 + 2 = 5\n\n", "\\boxed{1}"], ["z"]])
    est = MinFormEstimator(temperature=0.1, baseline="rloo_token", vr_coef=cfg.env.vr_coef)
    est.set_keys(reward="prm_reward")
    est(td)
    assert td["advantage"].shape == (*td.shape, 1) and torch.isfinite(td["advantage"]).all()
    eval_env = make_env(cfg, split="eval")
    assert eval_env.group_size == 1 and eval_env.batch_size[0] == cfg.train.eval_prompts
    assert set(list(eval_env.reset()["question"])).isdisjoint(list(env.reset()["question"]))


def test_make_env_jsonl_preset_and_hf_prm_config_errors():
    cfg = load_config("configs/tiny.yaml", ["env.task=dataset", "env.dataset=gsm8k"])
    env = make_env(cfg)
    assert env.reset()["has_reference"].all()
    with pytest.raises(Exception, match="prm_model"):
        load_config("configs/tiny.yaml", ["env.prm=hf"])


def test_rewind_repeats_the_same_questions():
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=3)
    first = list(env.reset()["question"])
    env.reset()
    env.rewind()
    assert list(env.reset()["question"]) == first


def test_vr_share_draws_whole_groups_once_whatever_the_shard():
    # env.vr_share=0.25: a wrong answer costs c_vr only in the groups drawn into the share; the draw is per
    # global group position, so one env and two sharded envs draw the same groups, and about a quarter of them.
    from envs.tasks import ProblemStream

    def flags(env, rounds=8):
        out = []
        for _ in range(rounds):
            td = env.reset()
            out += [(g, bool(v)) for g, v in zip(td["group_id"].tolist(), td["receives_vr"].reshape(-1).tolist())]
        return out

    whole = ReasoningStepEnv(
        ProblemStream(ARITH, seed=3), ArithmeticRulePRM(), batch_size=16, group_size=2, vr_share=0.25, seed=3
    )
    shards = [
        ReasoningStepEnv(
            ProblemStream(ARITH, seed=3, shard=(r, 2)),
            ArithmeticRulePRM(),
            batch_size=8,
            group_size=2,
            vr_share=0.25,
            seed=3,
        )
        for r in range(2)
    ]
    drawn = dict(flags(whole))
    for env in shards:
        for g, v in flags(env):
            assert drawn[g] == v
    per_group = {}
    for g, v in flags(ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=64, group_size=4, vr_share=0.25)):
        per_group.setdefault(g, set()).add(v)
    assert all(len(v) == 1 for v in per_group.values())  # the samples of one prompt agree
    share = sum(v == {True} for v in per_group.values()) / len(per_group)
    assert 0.15 < share < 0.35, share
    # The reward: a wrong final answer costs c_vr in a drawn group only; the PRM score is the same.
    env = ReasoningStepEnv(ARITH, ArithmeticRulePRM(), batch_size=64, group_size=1, vr_share=0.25)
    td = env.reset()
    out = env.step(action(["\\boxed{-12345}"] * 64, eos=[True] * 64))["next"]
    gets = td["receives_vr"].reshape(-1)
    assert gets.any() and not gets.all()
    assert torch.equal(out["reward"].reshape(-1), out["prm_reward"].reshape(-1) - gets.float())
