"""Learned PRMs: step labels (a jsonl schema, converters, Monte-Carlo labels from the policy), training, metrics.

``python -m pure_rl.prm label|train|convert|evaluate``; see docs/prm.md.
"""

from pure_rl.prm.labels import LabelError, StepLabels, convert_file, read_step_labels, write_step_labels
from pure_rl.prm.metrics import first_error_f1, prm_metrics, roc_auc, step_accuracy

__all__ = [
    "LabelError",
    "StepLabels",
    "convert_file",
    "first_error_f1",
    "prm_metrics",
    "read_step_labels",
    "roc_auc",
    "step_accuracy",
    "write_step_labels",
]
