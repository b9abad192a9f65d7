"""Rollouts through a TorchRL collector: one grouped batch of whole episodes per ``next()``."""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector

from agents import make_policy
from envs import make_env
from envs.ragged import token_id_lists
from pure_rl.rollout import collect, make_collector, rollout_actor


@pytest.mark.parametrize("mode", ["step", "response"])
def test_collector_batch_equals_a_rollout_of_the_same_episodes(greedy_cfg, mode):
    cfg = greedy_cfg()
    policy = make_policy(cfg)
    ref = collect(make_env(cfg), policy, mode)  # EnvBase.rollout, cut at the longest episode
    env = make_env(cfg)
    collector = make_collector(env, policy, mode)
    first, second = collector.next(), collector.next()
    collector.shutdown()

    assert 2 <= ref.shape[1] < cfg.env.max_steps  # episodes of different lengths, shorter than the budget
    # The batch stops when the longest episode ends; the collector's construction reset was rewound, so the
    # first batch has the first questions, and the same episodes step for step.
    assert first.shape == ref.shape
    assert first.get("question").tolist() == ref.get("question").tolist()
    assert token_id_lists(first.get("step_token_ids")) == token_id_lists(ref.get("step_token_ids"))
    for key in [("next", "reward"), ("next", "done"), ("next", "prm_reward"), ("next", "verifier_reward")]:
        torch.testing.assert_close(first[key], ref[key], msg=str(key))
    # Every batch starts fresh episodes, in whole groups of the next questions.
    assert (second[:, 0].get("step_count") == 0).all()
    q1 = [row[0] for row in first.get("question").tolist()]
    q2 = [row[0] for row in second.get("question").tolist()]
    assert not set(q1) & set(q2)
    assert q2[0::2] == q2[1::2]  # samples of one prompt stay together (group size 2)


def restarting_batch(cfg, mode):
    """One 12-step batch of a plain TorchRL Collector over an env with restart_groups=True."""
    env = make_env(cfg)
    env.restart_groups = True
    collector = Collector(
        env,
        rollout_actor(env, make_policy(cfg), mode),
        frames_per_batch=6 * 12,
        total_frames=-1,
        trust_policy=True,
        device="cpu",
        auto_register_policy_transforms=False,
    )
    batch = collector.next()
    collector.shutdown()
    return batch


def test_restart_groups_resets_only_whole_finished_groups(greedy_cfg):
    # Continuous collection (restart_groups=True): a group gets a new question only once all its episodes ended.
    cfg = greedy_cfg("env.max_steps=3")
    batch = restarting_batch(cfg, "step")
    questions = batch.get("question").tolist()
    group_ids = batch.get("group_id")
    assert group_ids.unique().numel() > 3, "groups should have restarted within 12 steps of 3-step episodes"
    for t in range(batch.shape[1]):
        assert torch.equal(group_ids[0::2, t], group_ids[1::2, t])  # both rows of a group on the same question
        assert [questions[i][t] for i in range(0, 6, 2)] == [questions[i][t] for i in range(1, 6, 2)]
    # A row restarts exactly when its group has finished: the step after a group's last done.
    done = batch[("next", "done")].reshape(6, -1)
    for t in range(batch.shape[1] - 1):
        group_done = done[:, t].view(3, 2).all(-1).repeat_interleave(2)
        restarted = batch.get("step_count")[:, t + 1] == 0
        assert torch.equal(restarted, group_done)
    # The response mode regenerates only the restarted rows, and (greedy) writes the same steps.
    response = restarting_batch(cfg, "response")
    assert token_id_lists(response.get("step_token_ids")) == token_id_lists(batch.get("step_token_ids"))
    torch.testing.assert_close(response[("next", "reward")], batch[("next", "reward")])


def test_make_collector_refuses_an_env_that_restarts_groups(greedy_cfg):
    cfg = greedy_cfg()
    env = make_env(cfg)
    env.restart_groups = True
    with pytest.raises(ValueError, match="restart_groups=False"):
        make_collector(env, make_policy(cfg))


class CountingPRM:
    """Wraps a PRM and counts the steps it is asked to score (the PRM's cost)."""

    def __init__(self, prm):
        self.prm, self.scored, self.calls = prm, 0, 0
        self.wants_token_ids, self.prefix_causal = prm.wants_token_ids, prm.prefix_causal

    def __call__(self, questions, steps, **context):
        self.calls += 1
        self.scored += sum(len(s) for s in steps)
        return self.prm(questions, steps, **context)


@pytest.mark.parametrize("which", ["rule", "hf"])
def test_planned_prm_scores_equal_scoring_every_prefix(greedy_cfg, tiny_tokenizer, tiny_prm_model, which):
    """Response mode scores each whole response once; every step's reward equals re-scoring its prefix, which
    a PRM that is not prefix-causal still gets (the quadratic path)."""
    from envs.prm import HFTokenClassificationPRM
    from envs.rule_prm import ArithmeticRulePRM

    if which == "rule":
        make = lambda: ArithmeticRulePRM(answer_check=True)  # noqa: E731 (its scores read earlier steps)
    else:
        make = lambda: HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="pure_text")  # noqa: E731
    cfg = greedy_cfg()
    policy = make_policy(cfg)
    planned, stepwise = CountingPRM(make()), CountingPRM(make())
    stepwise.prefix_causal = False
    assert planned.prefix_causal
    a = collect(make_env(cfg, prm=planned), policy, "response")
    b = collect(make_env(cfg, prm=stepwise), policy, "response")
    assert a.get("step_text").tolist() == b.get("step_text").tolist()
    torch.testing.assert_close(a["next", "prm_reward"], b["next", "prm_reward"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["next", "reward"], b["next", "reward"], atol=1e-5, rtol=0)
    steps = int(a.get(("next", "step_count"))[:, -1].sum())
    assert planned.calls == 1 and planned.scored == steps  # one call, each step once: linear
    assert stepwise.scored > steps  # every prefix again: 1 + 2 + ... + K per response


def test_a_step_off_the_plan_is_scored_on_what_was_written(tiny_tokenizer):
    """Once a written step differs from the planned response, that step and every later one are scored live,
    even a later step whose text matches the plan (its planned score read another prefix)."""
    from envs.reasoning_env import ReasoningStepEnv
    from envs.rule_prm import ArithmeticRulePRM
    from envs.tasks import ArithmeticTask
    from pure_rl.rollout import ResponseScript, rollout_responses

    tok, eos = tiny_tokenizer, tiny_tokenizer.eos_token_id

    def split(text):
        script = ResponseScript([[*tok.encode(text), eos]], tok, "\n\n", [eos], 200)
        return [*tok.encode(text), eos], script.texts[0], script.steps[0]

    _, planned_texts, planned_ids = split("1 + 1 = 2.\n\nSo \\boxed{4}.")
    written, written_texts, _ = split("2 + 2 = 4.\n\nSo \\boxed{4}.")
    assert planned_texts[1] == written_texts[1]  # the answer step reads the same
    prm = CountingPRM(ArithmeticRulePRM(answer_check=True))
    env = ReasoningStepEnv(ArithmeticTask(1), prm, batch_size=1, max_steps=4, max_tokens=200)
    td = env.reset()
    env.plan_responses([0], [planned_texts], [planned_ids])
    assert env.planned[0][2] == [1.0, -1.0]  # planned: 4 is not derived from 1 + 1 = 2
    traj = rollout_responses(env, [written], tok, [eos], tensordict=td)
    # Written: 2 + 2 = 4 derives the boxed 4, so the answer step is right; the plan would have said wrong.
    assert traj["next", "prm_reward"].flatten().tolist() == [1.0, 1.0]
    assert env.planned[0] is None and prm.calls == 3  # the plan, then both steps live


@pytest.mark.parametrize("mode", ["step", "response"])
def test_the_collector_runs_the_policy_itself_never_a_copy_on_another_device(greedy_cfg, mode):
    # A TorchRL collector deep-copies a policy whose parameters are not on its policy device (the env's CPU, for a
    # model on cuda:0), and would generate with that stale copy. The model is held outside the module tree, so
    # asked to place the actor on another device ("meta" stands in for a GPU here) the collector keeps it as is.
    cfg = greedy_cfg()
    env, policy = make_env(cfg), make_policy(cfg)
    assert policy.model is not None and not list(policy.parameters())
    collector = make_collector(env, policy, mode)
    actor = rollout_actor(env, policy, mode)
    placed, _ = collector._get_policy_and_device(policy=actor, policy_device=torch.device("meta"))
    assert placed is actor
    collector.shutdown()
