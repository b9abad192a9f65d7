"""Step segmentation: text never lost, merged separator tokens, EOS, the first-separator rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.steps import split_text_steps, split_token_steps

pieces = st.lists(
    st.sampled_from(["a", "12", " + ", "=", ".", "\n", "\n\n", "\n\n\n", " ", "é", "The answer", "\\boxed{7}"]),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(parts=pieces)
def test_text_steps_join_back_and_end_at_first_separator(parts):
    text = "".join(parts)
    steps = split_text_steps(text)
    assert "".join(steps) == text
    for s in steps[:-1]:
        assert s.endswith("\n\n") and "\n\n" not in s[:-2]
    if steps:
        assert "\n\n" not in steps[-1][:-2]


def test_text_steps_examples():
    assert split_text_steps("") == []
    assert split_text_steps("a\n\nb") == ["a\n\n", "b"]
    assert split_text_steps("a\n\nb\n\n") == ["a\n\n", "b\n\n"]
    assert split_text_steps("x", separator="\n") == ["x"]
    with pytest.raises(ValueError):
        split_text_steps("a", separator="")


def test_merged_separator_token_ends_a_step(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("Tom has 12 apples.\n\nHe buys 7: 12 + 7 = 19.\n\nThe answer is \\boxed{19}.")
    merged = [i for i in ids if tok.decode([i]) == ".\n\n"]
    assert merged, "the tiny tokenizer must produce a merged '.\\n\\n' token for this test to mean anything"
    steps = split_token_steps(ids, tok)
    texts = [tok.decode(s) for s in steps]
    assert texts == ["Tom has 12 apples.\n\n", "He buys 7: 12 + 7 = 19.\n\n", "The answer is \\boxed{19}."]
    assert [t for s in steps for t in s] == ids


@settings(max_examples=60, deadline=None)
@given(parts=pieces)
def test_token_steps_never_lose_text(tiny_tokenizer, parts):
    tok = tiny_tokenizer
    text = "".join(parts)
    ids = tok.encode(text)
    steps = split_token_steps(ids, tok)
    assert [t for s in steps for t in s] == ids
    assert "".join(tok.decode(s) for s in steps) == tok.decode(ids) == text
    for s in steps[:-1]:
        # A step ends with the token that completes its first separator.
        assert "\n\n" in tok.decode(s) and "\n\n" not in tok.decode(s[:-1])


def test_eos_ends_the_response_and_stays_in_its_step(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    ids = [*tok.encode("a\n\nb"), eos, *tok.encode("ignored\n\n")]
    steps = split_token_steps(ids, tok, eos_token_ids=[eos])
    assert [tok.decode(s, skip_special_tokens=True) for s in steps] == ["a\n\n", "b"]
    assert steps[-1][-1] == eos
    assert split_token_steps([eos], tok, eos_token_ids=[eos]) == [[eos]]
    assert split_token_steps([], tok) == []
