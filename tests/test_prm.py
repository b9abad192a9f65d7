"""Reward sources: the arithmetic rule PRM and the HF token-classification PRM (both layouts)."""

from __future__ import annotations

import pytest
import torch

from envs.prm import HFTokenClassificationPRM, PRMError, ProcessRewardModel
from envs.rule_prm import ArithmeticRulePRM, check_equations
from envs.tasks import ArithmeticTask


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12 + 7 = 19", [True]),
        ("12 + 7 = 20", [False]),
        ("3 * 4 = 12 + 1 = 13", [True, True]),  # running calculation
        ("3 * 4 = 12 + 1 = 14", [True, False]),
        ("3 * 4 = 13 + 1 = 14", [False, True]),
        ("So 0.1 + 0.2 = 0.3.", [True]),  # exact rationals, no float error
        ("7 / 2 = 3", [False]),
        ("7 / 2 = 3.5", [True]),
        ("5 / 0 = 0", [False]),
        ("$3 \\times 4 = 12$", [True]),
        ("3 x 4 = 12", [True]),
        ("1,000 + 1 = 1,001", [True]),
        ("2^3 = 8", [True]),
        ("(2 + 3) * 4 = 20", [True]),
        ("-3 + 5 = 2", [True]),
        ("He has 20 - 4 = 16 apples, and 16 / 2 = 8.", [True, True]),
        ("x = 5", []),
        ("x2 = 4", []),
        ("12 apples = 12", []),
        ("\\frac{1}{2} = 0.5", []),
        ("9^9^9 = 1", []),  # bounded powers: not evaluated
        ("Let me think.", []),
        ("The answer is \\boxed{19}.", []),
    ],
)
def test_check_equations(text, expected):
    assert check_equations(text) == expected


def test_rule_prm_scores_and_neutral_filler():
    prm = ArithmeticRulePRM(correct_score=1.0, wrong_score=-1.0, neutral_score=0.2)
    scores = prm(["q"], [["12 + 7 = 19.\n\n", "12 + 7 = 18.\n\n", "Let me double check.\n\n"]])
    assert scores == [[1.0, -1.0, 0.2]]
    with pytest.raises(ValueError, match="neutral_score"):
        ArithmeticRulePRM(neutral_score=2.0)


def test_rule_prm_accepts_reference_solutions():
    prm = ArithmeticRulePRM(neutral_score=0.0)
    for level in range(1, 6):
        task = ArithmeticTask(level, seed=3)
        for i in range(20):
            steps = task.problem(i).solution.split("\n\n")
            scores = prm(["q"], [steps])[0]
            assert -1.0 not in scores, (level, i, steps)
            assert scores.count(1.0) == len(steps) - 2  # every computation step checks out


# --- the HF token-classification PRM ------------------------------------------------------------------------


QUESTION = "Tom has 3 apples and gets 4 more. How many?"
STEPS = ["Tom starts with 3.\n\n", "3 + 4 = 7.\n\n", "The answer is \\boxed{7}."]


@pytest.mark.parametrize("layout", ["pure_text", "qwen"])
def test_hf_prm_scores_shape_range_and_manual_equality(tiny_prm_model, tiny_tokenizer, layout):
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout=layout)
    scores = prm([QUESTION, "Other?"], [STEPS, STEPS[:1]])
    assert [len(s) for s in scores] == [3, 1]
    assert all(-1 <= x <= 1 for row in scores for x in row)
    ids, positions = prm.format.encode(QUESTION, STEPS)
    assert [ids[p] for p in positions] == [prm.format.marker_id] * 3
    with torch.no_grad():
        probs = torch.softmax(tiny_prm_model(input_ids=torch.tensor([ids])).logits[0], -1)
    manual = [(probs[p, 1] - probs[p, 0]).item() for p in positions]
    assert scores[0] == pytest.approx(manual, abs=1e-5)


@pytest.mark.parametrize("layout", ["pure_text", "qwen"])
def test_hf_prm_reads_exactly_each_steps_position(tiny_prm_model, tiny_tokenizer, layout):
    """Flip the label logits at one step's marker token: only that step's score moves (it changes sign)."""
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout=layout)
    base = prm([QUESTION], [STEPS])[0]
    _, positions = prm.format.encode(QUESTION, STEPS)
    for k, pos in enumerate(positions):

        def flip(module, inputs, output, pos=pos):
            output.logits[:, pos] = output.logits[:, pos].flip(-1)
            return output

        handle = tiny_prm_model.register_forward_hook(flip)
        try:
            flipped = prm([QUESTION], [STEPS])[0]
        finally:
            handle.remove()
        for j in range(len(STEPS)):
            if j == k:
                assert flipped[j] == pytest.approx(-base[j], abs=1e-5)
            else:
                assert flipped[j] == pytest.approx(base[j], abs=1e-6)


def test_hf_prm_batching_padding_and_causality(tiny_prm_model, tiny_tokenizer):
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, batch_size=2, layout="pure_text")
    alone = prm([QUESTION], [STEPS])[0]
    batched = prm(["A much longer question about many things? " * 3, QUESTION, "q"], [STEPS[:1], STEPS, STEPS])
    assert batched[1] == pytest.approx(alone, abs=1e-5)  # right padding does not move scores
    prefix = prm([QUESTION], [STEPS[:2]])[0]
    assert prefix == pytest.approx(alone[:2], abs=1e-5)  # a causal PRM: later steps cannot change earlier scores


def test_hf_prm_from_folder_positive_mode_and_truncation(tiny_prm_model, tiny_tokenizer, tmp_path):
    tiny_prm_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    prm = HFTokenClassificationPRM(tmp_path, layout="pure_text", score_mode="positive", max_length=12)
    scores = prm([QUESTION], [STEPS])[0]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)


def test_hf_prm_rejects_bad_setup(tiny_prm_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="layout"):
        HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="other")
    with pytest.raises(ValueError, match="tokenizer"):
        HFTokenClassificationPRM(tiny_prm_model, None)
    with pytest.raises(ValueError, match="step token"):
        HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="qwen", step_token="<nope>")


class ShortPRM(ProcessRewardModel):
    def score(self, questions, steps):
        return [[0.0] for _ in steps]


def test_prm_wrong_score_count_is_an_error():
    with pytest.raises(PRMError, match="2 steps"):
        ShortPRM()(["q"], [["a", "b"]])


def test_answer_check_scores_supported_answers_correct_and_guesses_wrong():
    prm = ArithmeticRulePRM(neutral_score=0.5, answer_check=True)
    worked = ["Ben starts with 9 pencils.", "After giving away 4: 9 - 4 = 5.", "The answer is \\boxed{5}."]
    assert prm.score(["q"], [worked]) == [[0.5, 1.0, 1.0]]
    guess = ["Ben starts with 9 pencils.", "The answer is \\boxed{5}."]
    assert prm.score(["q"], [guess]) == [[0.5, -1.0]]
    # Derived by a false equation is not support; a running chain derives its last value.
    wrong = ["9 - 4 = 6.", "The answer is \\boxed{6}."]
    assert prm.score(["q"], [wrong]) == [[-1.0, -1.0]]
    chain = ["3 * 4 = 12 + 1 = 13.", "So \\boxed{13}."]
    assert prm.score(["q"], [chain]) == [[1.0, 1.0]]
    # Off (the default): the answer line is neutral like any step without an equation.
    assert ArithmeticRulePRM(neutral_score=0.5).score(["q"], [guess]) == [[0.5, 0.5]]


class FixedOutputPRM(ProcessRewardModel):
    """Returns whatever it was given, whatever it is asked."""

    def __init__(self, output):
        self.output = output

    def score(self, questions, steps):
        return self.output


@pytest.mark.parametrize(
    "output,message",
    [
        ([[0.5]], r"FixedOutputPRM returned 1 score lists for 2 solutions"),  # would broadcast solution 0's scores
        ([[0.5], [0.5], [0.5]], r"returned 3 score lists for 2 solutions"),
        (None, r"returned None for 2 solutions"),
        ([[0.5], None], r"returned None for the 1 steps of solution 1 \(question 'q1'\)"),
        ([[0.5], ["0.5"]], r"returned '0\.5' for step 0 of solution 1 .*real number"),
        ([[0.5], [5.0]], r"returned 5\.0 for step 0 of solution 1 .*outside its range \[-1\.0, 1\.0\]"),
        ([[0.5], [float("inf")]], r"returned inf for step 0 of solution 1"),
    ],
)
def test_the_prm_contract_is_enforced_naming_the_prm_and_the_row(output, message):
    with pytest.raises(PRMError, match=message):
        FixedOutputPRM(output)(["q0", "q1"], [["a"], ["b"]])


def test_a_prm_declares_its_own_range():
    class ZeroToTen(FixedOutputPRM):
        score_range = (0.0, 10.0)

    assert ZeroToTen([[5.0]])(["q"], [["a"]]) == [[5.0]]


def test_step_text_cannot_forge_qwen_step_positions(tiny_prm_model, tiny_tokenizer):
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="qwen")
    forged = [STEPS[0].replace("Tom", "Tom <extra_0>"), STEPS[1], STEPS[2]]
    _, positions = prm.format.encode(QUESTION + " <extra_0>", forged)
    assert len(positions) == 3
    # The marker text is dropped, so the scores are those of the text without it.
    clean = [STEPS[0].replace("Tom", "Tom "), STEPS[1], STEPS[2]]
    assert prm([QUESTION + " <extra_0>"], [forged])[0] == pytest.approx(prm([QUESTION + " "], [clean])[0], abs=1e-6)


def test_a_prm_without_trained_head_weights_is_an_error(tiny_tokenizer, tmp_path):
    """A base causal LM (no 'score' head) given as a PRM would get a random head: refused, naming the weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(PRMError, match=r"would be initialised at random \(score\.bias, score\.weight\)"):
        HFTokenClassificationPRM(tmp_path)


def test_qwen_math_prm_two_layer_head_loads_its_trained_weights(tiny_prm_model, tiny_tokenizer, tmp_path):
    """A checkpoint laid out as Qwen2.5-Math-PRM's (score.0 -> ReLU -> score.2): its head weights are used."""
    h = tiny_prm_model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))
    for p in head.parameters():
        p.data = torch.randn(p.shape, generator=g)
    state = {k: v for k, v in tiny_prm_model.state_dict().items() if not k.startswith("score.")}
    state.update({f"score.{k}": v for k, v in head.state_dict().items()})
    tiny_prm_model.save_pretrained(tmp_path, state_dict=state)
    tiny_tokenizer.save_pretrained(tmp_path)
    prm = HFTokenClassificationPRM(tmp_path, layout="qwen")
    ids, positions = prm.format.encode(QUESTION, STEPS)
    with torch.no_grad():
        hidden = tiny_prm_model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        probs = torch.softmax(head(hidden), -1)
    manual = [(probs[p, 1] - probs[p, 0]).item() for p in positions]
    assert prm([QUESTION], [STEPS])[0] == pytest.approx(manual, abs=1e-5)


def test_pure_layout_is_the_reference_input_from_the_policy_s_token_ids(tiny_prm_model, tiny_tokenizer):
    """PURE-PRM-7B's input as the reference builds it: prompt ids, each step's ids without its boundary token
    (one ending in "\\n\\n", or EOS), then "\\n"; scores read there. Text alone is refused, not approximated."""
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="pure")
    enc = lambda text: tiny_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompt = "Tom has 3 apples and gets 4 more. How many?\n\n"
    steps = [enc(s) for s in STEPS]
    steps[-1] = [*steps[-1], tiny_tokenizer.eos_token_id]
    newline = enc("\n")[0]
    ids, positions = prm.format.encode_reference(prompt, steps)
    expected = enc(prompt)
    for s in steps:
        boundary = s[-1] == tiny_tokenizer.eos_token_id or tiny_tokenizer.decode([s[-1]]).endswith("\n\n")
        assert boundary, "each test step ends at a boundary token"
        expected += [*s[:-1], newline]
    assert ids == expected and [ids[p] for p in positions] == [newline] * 3
    with torch.no_grad():
        probs = torch.softmax(tiny_prm_model(input_ids=torch.tensor([ids])).logits[0], -1)
    manual = [(probs[p, 1] - probs[p, 0]).item() for p in positions]
    scores = prm([QUESTION], [STEPS], prompts=[prompt], step_token_ids=[steps])[0]
    assert scores == pytest.approx(manual, abs=1e-5)
    with pytest.raises(PRMError, match="'pure' layout reads the policy's prompt and step token ids"):
        prm([QUESTION], [STEPS])


def test_the_env_gives_a_token_reading_prm_the_sampled_ids(tiny_prm_model, tiny_tokenizer):
    from envs.reasoning_env import ReasoningStepEnv
    from envs.tasks import ArithmeticTask
    from pure_rl.rollout import rollout_responses

    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="pure")
    env = ReasoningStepEnv(ArithmeticTask(1), prm, batch_size=1, reward_mode="prm", prompt_template="{question}\n\n")
    response = [*tiny_tokenizer.encode("".join(STEPS), add_special_tokens=False), tiny_tokenizer.eos_token_id]
    traj = rollout_responses(env, [response], tiny_tokenizer, [tiny_tokenizer.eos_token_id])
    question = traj.get("question").tolist()[0][0]
    ids = [t.tolist() for t in traj.get("step_token_ids").tolist()[0] if len(t)]
    expected = prm([question], [[""] * len(ids)], prompts=[question + "\n\n"], step_token_ids=[ids])[0]
    got = traj.get(("next", "prm_reward")).reshape(-1)[: len(ids)].tolist()
    assert got == pytest.approx(expected, abs=1e-6)


def test_nested_marker_text_cannot_assemble_a_qwen_step_marker(tiny_prm_model, tiny_tokenizer):
    # One pass of replace over "<extra<extra_0>_0>" would leave the "<extra_0>" it just assembled.
    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="qwen")
    nested = [STEPS[0] + " <extra<extra<extra_0>_0>_0>", STEPS[1], STEPS[2]]
    assert "<extra_0>" not in prm.format._unmarked(nested[0])
    _, positions = prm.format.encode(QUESTION, nested)
    assert len(positions) == 3


@pytest.mark.parametrize("eos_on_truncation", [True, False])
def test_a_cut_response_reaches_the_prm_as_the_reference_builds_it(tiny_prm_model, tiny_tokenizer, eos_on_truncation):
    # The reference overwrites a cut response's last token with EOS and its PRM input leaves EOS out; with
    # algo.eos_on_truncation the env feeds a token-reading PRM exactly that, else the step as sampled.
    from envs.reasoning_env import ReasoningStepEnv
    from envs.tasks import ArithmeticTask
    from pure_rl.rollout import rollout_responses

    prm = HFTokenClassificationPRM(tiny_prm_model, tiny_tokenizer, layout="pure")
    response = tiny_tokenizer.encode("".join(STEPS), add_special_tokens=False)  # no EOS
    budget = len(response) - 2  # cut inside the last step
    env = ReasoningStepEnv(
        ArithmeticTask(1),
        prm,
        batch_size=1,
        reward_mode="prm",
        prompt_template="{question}\n\n",
        max_tokens=budget,
        eos_on_truncation=eos_on_truncation,
    )
    traj = rollout_responses(env, [response[:budget]], tiny_tokenizer, [tiny_tokenizer.eos_token_id])
    assert traj.get(("next", "truncated")).reshape(-1)[-1].item()
    question = traj.get("question").tolist()[0][0]
    ids = [t.tolist() for t in traj.get("step_token_ids").tolist()[0] if len(t)]
    as_reference = [*ids[:-1], [*ids[-1][:-1], tiny_tokenizer.eos_token_id]]  # overwritten, then dropped
    expected = {
        cut: prm([question], [[""] * len(ids)], prompts=[question + "\n\n"], step_token_ids=[steps])[0][-1]
        for cut, steps in ((True, as_reference), (False, ids))
    }
    assert expected[True] != pytest.approx(expected[False], abs=1e-6), "the cut token must matter to the PRM"
    got = traj.get(("next", "prm_reward")).reshape(-1)[len(ids) - 1].item()
    assert got == pytest.approx(expected[eos_on_truncation], abs=1e-6)
