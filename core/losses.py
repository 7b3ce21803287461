"""The terms of PPO's loss (CL-4): the ratio and clipped surrogates, the value loss, the entropy.

A `*_surrogate` returns the notes' **objective** per element, to be *maximised*; `value_loss` is
a loss. `core.ppo.ppo_loss` minimises −reduce(objective) + c₁·reduce(value_loss) − c₂·reduce(H).
Shapes match elementwise: `(N,)` for game steps, `(B, T)` for B replies of T tokens, with an
optional `mask` (1 = real token). The surrogates the lessons meet first (PG-4, TR-2) are in
`core.surrogates`. Sources: notes 001 (PPO for LLMs), 002 (PPO paper notes), 003 (PPO derived),
004 (PG to GRPO); Kakade & Langford 2002 (importance ratio); Schulman et al. 2017 (PPO, eqs.
6–9); Yu et al. 2025 (DAPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.catalog import implements
from core.checks import check_positive, check_same_shape

__all__ = ["ratio_surrogate", "clipped_surrogate", "value_loss", "entropy_from_logits"]


@implements("IS-1")
def ratio_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """Importance-ratio surrogate  ρ_t A_t,  ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)   (IS-1, 002, 003).

    Samples come from π_old; ρ re-weights them for π_θ. At θ = θ_old, ∇(ρA) = ∇ log π_θ · A,
    the policy gradient (PG-4). For a whole sequence, `logprobs` is Σ_t token log-probs (IS-2).

    Symbols → arguments: log π_θ → `logprobs`, log π_old → `old_logprobs` (no gradient),
    A → `advantages`. Shapes: equal; returns ρA of that shape.
    """
    check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs, advantages=advantages)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    return ratio * advantages.detach()


@implements("CL-1", "CL-2", "CL-3", "DA-1")
def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_coef: float,
    clip_coef_high: float | None = None,
    use_min: bool = True,
) -> torch.Tensor:
    """PPO's clipped surrogate  min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high) A)   (CL-1, DA-1).

    Sources: notes 001–003; Schulman et al. 2017, eq. 7; DAPO's clip-higher (Yu et al. 2025)
    lets ε_high > ε_low so that unlikely tokens with A > 0 can still grow.

    Why the min (CL-2, note 003): with it, the gradient is zero exactly when the ratio has
    already moved in the direction the advantage wants beyond the trust region, (A > 0 and
    ρ > 1 + ε_high) or (A < 0 and ρ < 1 − ε_low); everywhere else it is the plain ρA gradient, so
    a step that made things worse can always be undone. `use_min=False` returns clip(ρ)·A alone,
    which also zeroes the gradient in the two "wrong side" cases (A > 0, ρ < 1 − ε) and
    (A < 0, ρ > 1 + ε): shown in the lessons, never used for training. With the min the result
    is a pessimistic bound, ≤ ρA pointwise and equal to it at ρ = 1 (CL-3).

    Symbols → arguments: log π_θ → `logprobs`, log π_old → `old_logprobs`, A → `advantages`,
    ε_low → `clip_coef`, ε_high → `clip_coef_high` (defaults to ε_low). Shapes: equal; returns the
    per-element objective of that shape (to maximise).
    """
    check_positive("clip_coef", clip_coef)
    clip_coef_high = clip_coef if clip_coef_high is None else clip_coef_high
    check_positive("clip_coef_high", clip_coef_high)
    check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs, advantages=advantages)
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef_high) * advantages
    if not use_min:
        return clipped
    return torch.minimum(ratio * advantages, clipped)


@implements("CL-4", "AD-7")
def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    *,
    vf_clip_coef: float | None = None,
) -> torch.Tensor:
    """Critic loss ½(V_ψ(s) − V^targ)², optionally clipped   (CL-4, AD-7; notes 001, 004).

    V^targ is the λ-return Â + V_old (`returns`). The ½ is the reference code's (OpenAI
    baselines' ppo2, CleanRL, TRL): the gradient is the error V − V^targ itself, and c₁ = 0.5
    (`vf_coef`) weighs the critic exactly as CleanRL's `ppo.py` does. The PPO paper writes
    c₁(V − V^targ)² (eq. 9), which is this loss with c₁ doubled; Stable-Baselines3 also leaves
    the ½ out (its vf_coef 0.5 is our 1.0).

    With `vf_clip_coef` ε_v (PPO's reference code, detail 9 of "The 37 Implementation Details of
    PPO"), the new value may move at most ε_v from the old one before the loss stops pulling it
    further:
        ½·max((V − V^targ)², (V_old + clip(V − V_old, −ε_v, ε_v) − V^targ)²).

    Symbols → arguments: V_ψ(s) → `values`, V^targ → `returns`, V_old → `old_values`,
    ε_v → `vf_clip_coef`. Shapes: equal; returns the per-element loss.
    """
    check_same_shape("values", values, returns=returns, old_values=old_values)
    returns = returns.detach()
    unclipped = (values - returns) ** 2
    if vf_clip_coef is None:
        return 0.5 * unclipped
    if old_values is None:
        raise ValueError("value clipping needs old_values")
    check_positive("vf_clip_coef", vf_clip_coef)
    old_values = old_values.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -vf_clip_coef, vf_clip_coef)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H[π(·|s)] = −Σ_a π(a|s) log π(a|s) of a categorical given by `logits` (..., A).

    Returns (...). The entropy bonus −c₂·H of CL-4 keeps exploration alive.
    """
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)



