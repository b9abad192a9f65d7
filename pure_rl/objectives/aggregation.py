"""Loss aggregation: how per-token loss terms ``[B, T]`` become one number (``algo.loss_aggregation``).

An aggregation turns a micro-batch's per-token values into its loss, and says what share of the (mini-)batch's
loss that micro-batch is, so that gradient accumulation over micro-batches gives exactly the batch's loss:
``batch loss = sum over micro-batches of share * value``. The three in the field (names as verl's
``loss_agg_mode``):

==========================  ==========================================  ============================  ==========
ours                        per micro-batch value                       share of the batch            TRL
==========================  ==========================================  ============================  ==========
``seq_mean_token_mean``     mean over rows of (row sum / row tokens)    rows / batch rows             ``grpo``
``token_mean``              sum / micro-batch tokens                    tokens / batch tokens         ``dapo``
``seq_mean_token_sum_norm`` mean over rows of (row sum / max_tokens)    rows / batch rows             ``dr_grpo``
==========================  ==========================================  ============================  ==========

The per-sequence mean (the first, pure-rl's default and the reference code's) gives every response the same
weight whatever its length, so each token of a short response weighs more: Dr. GRPO (Liu et al. 2025) showed that
this biases the response length (a long wrong response is penalised less per token). ``token_mean`` weighs every
token of the batch alike (DAPO); ``seq_mean_token_sum_norm`` divides each response's sum by one constant, the
token budget (Dr. GRPO). ``mask`` is the tokens the loss counts (response tokens, less any a filter removed).
"""

from __future__ import annotations

import torch

from pure_rl.registry import register

__all__ = ["SeqMeanTokenMean", "SeqMeanTokenSumNorm", "TokenMean"]


@register("aggregation", "seq_mean_token_mean")
class SeqMeanTokenMean:
    """Each sequence's token mean, then the mean over sequences (TRL ``grpo``, verl ``seq-mean-token-mean``)."""

    def __call__(self, values: torch.Tensor, mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
        m = mask.to(values.dtype)
        return ((values * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()

    @staticmethod
    def share(mask: torch.Tensor, batch_mask: torch.Tensor) -> float:
        return mask.shape[0] / batch_mask.shape[0]


@register("aggregation", "token_mean")
class TokenMean:
    """Every token of the batch alike (TRL ``dapo``, its default; verl ``token-mean``)."""

    def __call__(self, values: torch.Tensor, mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
        m = mask.to(values.dtype)
        return (values * m).sum() / m.sum().clamp(min=1)

    @staticmethod
    def share(mask: torch.Tensor, batch_mask: torch.Tensor) -> float:
        return int(mask.sum()) / max(1, int(batch_mask.sum()))


@register("aggregation", "seq_mean_token_sum_norm")
class SeqMeanTokenSumNorm:
    """Each sequence's token sum over the token budget, then the mean over sequences (TRL ``dr_grpo``, verl
    ``seq-mean-token-sum-norm``)."""

    def __call__(self, values: torch.Tensor, mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
        return ((values * mask.to(values.dtype)).sum(-1) / max_tokens).mean()

    @staticmethod
    def share(mask: torch.Tensor, batch_mask: torch.Tensor) -> float:
        return mask.shape[0] / batch_mask.shape[0]
