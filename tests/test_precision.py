"""Mixed precision that learns: bf16 compute with fp32 master weights moves every weight at the paper's learning
rate, where updating bf16 weights directly rounds the steps away; the schedule, mini-batches and checkpointing."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from tensordict import TensorDict

from pure_rl.build import log_probs_with_entropy
from pure_rl.config import ConfigError, load_config, precision_warnings
from pure_rl.objectives.loss import StepTokenPPOLoss
from pure_rl.update import lr_scheduler, ppo_update

TINY = "configs/tiny.yaml"


def token_batch(vocab: int, rows: int = 4, prompt: int = 6, response: int = 10) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    t = prompt + response
    ids = torch.randint(3, vocab, (rows, t), generator=g)
    response_mask = torch.zeros(rows, t, dtype=torch.bool)
    response_mask[:, prompt:] = True
    return TensorDict(
        {
            "input_ids": ids,
            "attention_mask": torch.ones(rows, t, dtype=torch.long),
            "response_mask": response_mask,
            "advantage": torch.randn(rows, t, generator=g) * response_mask,
            "prompt_length": torch.full((rows,), prompt),
        },
        batch_size=[rows],
    )


def ten_steps(tiny_model_path, *overrides: str) -> tuple[float, float, float]:
    """Share of master-weight elements changed by 10 PPO steps at lr 5e-7, and the fp32 loss before and after
    (against the first policy's log-probs, so that a change of the policy shows in the loss)."""
    from transformers import AutoModelForCausalLM

    cfg = load_config(TINY, [f"policy.model={tiny_model_path}", "train.lr=5e-7", *overrides])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=getattr(torch, cfg.policy.dtype))
    tokens = token_batch(model.config.vocab_size)
    fn = functools.partial(log_probs_with_entropy, shared_prompt_pass=True)
    loss = StepTokenPPOLoss(model, kl_coef=0.0, log_prob_fn=fn)
    with torch.no_grad():
        tokens["old_log_prob"] = fn(model, tokens, False)[0].float()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

    def fp32_loss() -> float:
        reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
        reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        with torch.no_grad():
            return StepTokenPPOLoss(reference, kl_coef=0.0, log_prob_fn=fn)(tokens)["loss_objective"].item()

    start = fp32_loss()
    for _ in range(10):
        ppo_update(loss, optimizer, tokens, None, cfg)
    changed = sum((p.detach() != before[k]).sum().item() for k, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    return changed / total, start, fp32_loss()


def test_bf16_mixed_moves_the_master_weights_at_lr_5e_7_and_pure_bf16_does_not(tiny_model_path):
    mixed, start, end = ten_steps(tiny_model_path, "train.precision=bf16-mixed")
    pure, pure_start, pure_end = ten_steps(tiny_model_path, "policy.dtype=bfloat16")
    print(
        f"changed: bf16-mixed {mixed:.1%} (loss {start:.6f} -> {end:.6f}), "
        f"pure bf16 {pure:.1%} (loss {pure_start:.6f} -> {pure_end:.6f})"
    )
    assert mixed > 0.9 and end != start
    assert pure < 0.1


def test_mixed_precision_needs_fp32_masters_and_pure_bf16_is_warned():
    with pytest.raises(ConfigError, match=r"train\.precision=bf16-mixed keeps fp32 master weights"):
        load_config(TINY, ["train.precision=bf16-mixed", "policy.dtype=bfloat16"])
    assert any("will not learn" in w for w in precision_warnings(load_config(TINY, ["policy.dtype=bfloat16"])))
    assert not precision_warnings(load_config(TINY, ["train.precision=bf16-mixed"]))
    with pytest.raises(ConfigError, match=r"gradient_checkpointing=true needs train\.shared_prompt_pass=false"):
        load_config(TINY, ["train.gradient_checkpointing=true", "train.shared_prompt_pass=true"])


def test_shared_prompt_pass_auto_is_on_for_cpus_only_and_off_under_checkpointing():
    from pure_rl.config import shared_prompt_pass

    assert shared_prompt_pass(load_config(TINY)) is True
    assert shared_prompt_pass(load_config(TINY, ["policy.device=cuda:0"])) is False
    assert shared_prompt_pass(load_config(TINY, ["train.gradient_checkpointing=true"])) is False
    assert shared_prompt_pass(load_config(TINY, ["policy.device=cuda:0", "train.shared_prompt_pass=true"])) is True
    assert shared_prompt_pass(load_config(TINY, ["train.shared_prompt_pass=false"])) is False
    with pytest.raises(ConfigError, match=r"train\.shared_prompt_pass='always' is not allowed"):
        load_config(TINY, ["train.shared_prompt_pass=always"])


def test_learning_rate_warm_up_then_cosine_over_every_optimiser_step():
    cfg = load_config(
        TINY,
        ["train.lr=1.0", "train.lr_warmup_steps=2", "train.lr_schedule=cosine", "train.iterations=3",
         "train.mini_batch_size=2"],
    )  # fmt: skip
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    scheduler = lr_scheduler(optimizer, cfg, batch_size=4)  # 2 mini-batches x 3 iterations = 6 steps
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466])


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.precision=bf16-mixed"],
        ["train.mini_batch_size=2", "train.lr_warmup_steps=2", "train.lr_schedule=cosine"],
        ["train.gradient_checkpointing=true"],
    ],
    ids=["bf16_mixed", "mini_batches_schedule", "gradient_checkpointing"],
)
def test_memory_and_precision_levers_train(tmp_path, warm_tiny_path, overrides):
    from pure_rl.plots import read_metrics
    from pure_rl.train import main

    run_dir = tmp_path / "run"
    main(["--config", TINY, "--run-dir", str(run_dir), f"policy.model={warm_tiny_path}", *overrides])
    rows = read_metrics(run_dir / "logs" / "scalars")
    assert [r["iteration"] for r in rows] == [1.0, 2.0]
    assert all(r["grad_norm"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_truncated_importance_weights_by_hand():
    from pure_rl.objectives.loss import truncated_importance_weights

    trainer = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    engine = torch.tensor([[-1.1, -1.0, float("nan"), -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = truncated_importance_weights(trainer, engine, mask, cap=1.05)
    expected = torch.tensor([[min(math.exp(0.1), 1.05), math.exp(-1.0), 1.0, 0.0]])
    torch.testing.assert_close(w, expected)


def test_the_importance_weight_multiplies_each_tokens_surrogate():
    # On-policy (ratio 1) the surrogate is the advantage: the loss is minus the per-sequence mean of w * A, and
    # its gradient through the log-probs is scaled token by token by w.
    log_probs = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantage = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    weight = torch.tensor([[0.5, 1.0, 2.0], [1.5, 0.25, 0.0]])
    loss = StepTokenPPOLoss(torch.nn.Linear(1, 1), kl_coef=0.0, log_prob_fn=lambda m, t, e: (log_probs, log_probs))

    def batch(**extra):
        return TensorDict({"response_mask": mask, "advantage": advantage, **extra}, batch_size=[2])

    out = loss(batch(is_weight=weight))
    per_seq = ((weight * advantage * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(out["loss_objective"], -per_seq)
    out["loss_objective"].backward()
    torch.testing.assert_close(log_probs.grad, -(weight * advantage * mask) / mask.sum(-1, keepdim=True) / 2)
    log_probs.grad = None
    loss(batch())["loss_objective"].backward()  # no weight: today's loss
    torch.testing.assert_close(log_probs.grad, -(advantage * mask) / mask.sum(-1, keepdim=True) / 2)


def test_the_engine_correction_compares_the_trainers_log_probs_with_the_engines(greedy_cfg):
    # An engine whose numbers differ from the trainer's (here: its sampled log-probs shifted by a known delta, as a
    # bf16 engine's are by rounding) gets weights exp(-delta), capped; the KL then uses the trainer's own.
    from agents import make_policy
    from envs import make_env
    from pure_rl.rollout import collect
    from pure_rl.update import add_credit, make_estimator, policy_token_batch

    cfg = greedy_cfg("algo.engine_is_correction=tis", "algo.engine_is_cap=1.2", "policy.temperature=1.0")
    env, policy = make_env(cfg), make_policy(cfg)
    traj = collect(env, policy, "response")
    tokens = policy_token_batch(traj, policy, cfg)
    mask = tokens["response_mask"]
    delta = torch.where(torch.arange(mask.shape[1]) % 2 == 0, 0.3, -0.3).expand_as(mask) * mask
    tokens["sample_log_prob"] = tokens["sample_log_prob"] + delta
    loss = StepTokenPPOLoss(policy.model, kl_coef=cfg.algo.kl_coef, log_prob_fn=lambda *a: None)
    add_credit(traj, tokens, policy.model, policy.model, make_estimator(loss, cfg), cfg)
    expected = torch.exp(-delta).clamp(max=1.2) * mask
    torch.testing.assert_close(tokens["is_weight"], expected, atol=2e-4, rtol=2e-4)
    assert (tokens["is_weight"][mask] < 1).any() and (tokens["is_weight"][mask] == 1.2).any()
