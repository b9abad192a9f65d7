"""What a command-line process (train, evaluate, prm) does before its heavy imports.

TorchRL's LLM modules import vLLM at module level whenever vLLM is installed, and ``torchrl.collectors`` imports
them: on CPU that is about 8 of the 15 seconds it takes to import the collectors, paid by every run, torchrun
rank, resume and evaluation, also when the run's engine is transformers and vLLM is never used.
"""

from __future__ import annotations

import sys


def import_torchrl_without_vllm(backend: str | None = None) -> None:
    """Import TorchRL's collectors with vLLM hidden from it, unless ``backend`` (the run's ``policy.backend``) is
    vLLM.

    Only for a process that runs one job (a ``__main__``): TorchRL's own vLLM wrapper stays disabled in this
    process. vLLM itself still imports afterwards if something asks for it explicitly.
    """
    if backend == "vllm" or "torchrl.collectors" in sys.modules or "vllm" in sys.modules:
        return  # already imported: nothing left to save, and nothing to undo
    # A None entry makes importlib.util.find_spec("vllm"), which TorchRL checks, report it absent.
    sys.modules["vllm"] = None
    try:
        import torchrl.collectors  # noqa: F401
    finally:
        del sys.modules["vllm"]
