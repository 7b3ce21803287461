"""The surrogate objectives the lessons climb before PPO's clip: REINFORCE's score function
(PG-4) and the KL-penalised ratio (TR-2).

The two the PPO update trains with, ρA (IS-1) and the clipped surrogate (CL-1), are in
`core.losses`, with the same sign convention: a `*_surrogate` is the per-element objective, to
be maximised. Sources: notes 000 (RLHF objective), 001 (PPO for LLMs), 002 (PPO paper notes),
003 (PPO derived), 004 (PG to GRPO); Williams 1992 (REINFORCE); Schulman et al. 2017 (PPO, eq. 8).
"""

from __future__ import annotations

import torch

from core.catalog import implements
from core.checks import check_same_shape
from core.losses import ratio_surrogate

__all__ = ["score_function_surrogate", "kl_penalty_surrogate"]

@implements("PG-4")
def score_function_surrogate(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Score-function (REINFORCE) surrogate  log π_θ(a|s) · stopgrad(A)   (PG-4, notes 000–004).

    Its gradient is the policy-gradient estimate ∇ log π_θ(a|s) · A: the expectation of
    `score_function_surrogate` over a ~ π_θ has the same gradient as E[r] (the log-derivative
    trick, PG-3). `advantages` is detached: the return is a weight, not a function of θ.

    Symbols → arguments: log π_θ(a|s) → `logprobs`, A (or r, or any Ψ of PG-8) → `advantages`.
    Shapes: equal, any; returns the same shape.
    """
    check_same_shape("logprobs", logprobs, advantages=advantages)
    return logprobs * advantages.detach()


@implements("TR-2")
def kl_penalty_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """KL-penalised surrogate  ρA − β KL[π_old(·|s), π_θ(·|s)]   (TR-2; notes 002, 004; PPO eq. 8).

    The PPO paper's alternative to clipping: a soft trust region whose weight β is tuned by a
    controller (TR-3). `kl` is either the exact per-state KL (`core.kl.categorical_kl` of old and
    new logits) or, when only the taken actions' log-probs are at hand, the k3 estimate of
    KL[π_old‖π_θ] from samples of π_old (`core.kl.kl_estimate` with the roles swapped, as
    `core.ppo` does): (ρ − 1) − log ρ, unbiased and ≥ 0.

    Symbols → arguments: ρ from `logprobs`/`old_logprobs`, A → `advantages`, KL → `kl`
    (differentiable in θ), β → `beta`. Shapes: equal; returns the per-element objective.
    """
    check_same_shape("logprobs", logprobs, kl=kl)
    return ratio_surrogate(logprobs, old_logprobs, advantages) - beta * kl
