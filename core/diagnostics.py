"""The debug metrics of the PPO update (detail 12 of "The 37 Implementation Details of PPO"):
the approximate KL to the old policy, the clip fraction, and the critic's explained variance.

`core.ppo` returns them under the names of `core.metrics.METRICS`; `approx_kl` also decides the
early stop at `target_kl`. Shapes as in `core.losses`, with an optional `mask` (1 = real token).
"""

from __future__ import annotations

import torch

from core.kl import kl_estimate
from core.masked import masked_mean, masked_var

__all__ = ["approx_kl", "clip_fraction", "explained_variance"]


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean k3 estimate of KL[π_old‖π_θ] on actions sampled from π_old: E[(ρ − 1) − log ρ].

    Unbiased and never negative (KL-2; `core.kl.kl_estimate` with the roles of the two policies
    swapped), the "approx_kl" debug metric of PPO implementations.
    """
    return masked_mean(kl_estimate(old_logprobs.detach(), logprobs.detach(), "k3"), mask)


def clip_fraction(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    clip_coef: float,
    clip_coef_high: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Share of actions whose ratio lies outside [1 − ε_low, 1 + ε_high] (the "clipfrac" metric)."""
    clip_coef_high = clip_coef if clip_coef_high is None else clip_coef_high
    ratio = torch.exp(logprobs.detach() - old_logprobs.detach())
    outside = ((ratio < 1.0 - clip_coef) | (ratio > 1.0 + clip_coef_high)).to(ratio.dtype)
    return masked_mean(outside, mask)


def explained_variance(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 − Var[targets − predictions] / Var[targets]: 1 is a perfect critic, ≤ 0 a useless one.

    Returns NaN when the targets have zero variance (nothing to explain).
    """
    var_targets = masked_var(targets, mask)
    if float(var_targets) == 0.0:
        return torch.tensor(float("nan"), device=targets.device)
    return 1.0 - masked_var(targets - predictions, mask) / var_targets
