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
