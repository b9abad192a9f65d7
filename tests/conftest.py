"""Shared fixtures: tiny models built offline (seconds), cached for the session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from agents.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from agents.tiny import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("models"))
