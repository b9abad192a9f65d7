"""What acts and what is trained: the LLM policy, its generation backends, model loading, weight sync.

``agents`` imports only ``envs``' step boundary rule (``envs.steps``) and token-id layout (``envs.ragged``):
a policy reads observations and writes steps, it never sees rewards.
"""

from agents.generation import Generation, TransformersBackend
from agents.models import EMBEDDED_MODEL, ModelNotAvailableError, resolve_model_dir
from agents.policy import ReasoningPolicy, load_model_and_tokenizer, make_policy, make_reference_model

__all__ = [
    "EMBEDDED_MODEL",
    "Generation",
    "ModelNotAvailableError",
    "ReasoningPolicy",
    "TransformersBackend",
    "load_model_and_tokenizer",
    "make_policy",
    "make_reference_model",
    "resolve_model_dir",
]
