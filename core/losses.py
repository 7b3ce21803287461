"""Policy-gradient surrogates, the value loss, entropy, and masked reductions.

Sign convention: functions named `*_surrogate` return the **objective** of the notes, per
element, to be *maximised* (the notes write every objective "越大越好", note 002 (PPO paper
notes)). The PPO
update minimises `−reduce(objective) + c₁·value_loss − c₂·entropy` (CL-4). `value_loss` and
`bradley_terry_loss` are losses, to be minimised.

Shapes: every per-element function works elementwise on matching shapes: `(N,)` for a batch
of game steps, `(B, T)` for B replies of T tokens. Reductions take an optional `mask` of the
same shape (1 = real token, 0 = padding).

Sources: notes 000 (RLHF objective), 001 (PPO for LLMs), 003 (PPO derived), 004 (PG to GRPO)
and 002; Williams 1992 (REINFORCE); Kakade & Langford 2002 (importance
ratio); Schulman et al. 2017 (PPO, eqs. 6–9); Yu et al. 2025 (DAPO); Liu et al. 2025 (Dr. GRPO).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from core.catalog import implements
from core.checks import check_positive, check_same_shape
from core.kl import kl_estimate

__all__ = [
    "score_function_surrogate",
    "ratio_surrogate",
    "clipped_surrogate",
    "kl_penalty_surrogate",
    "value_loss",
    "entropy_from_logits",
    "bradley_terry_loss",
    "sequence_logprobs",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "reduce_loss",
    "LOSS_REDUCTIONS",
    "LossReduction",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
]


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


@implements("RM-1")
def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss  −log σ(R(x, y⁺) − R(x, y⁻))   (RM-1; notes 001, 004).

    P(y⁺ ≻ y⁻) = σ(R⁺ − R⁻) is the model of human preference; the loss is its negative
    log-likelihood, so only score differences matter (adding a constant changes nothing).
    DPO (DP-1) is this same loss on the implicit reward β log π_θ/π_ref.

    Symbols → arguments: R(x, y⁺) → `chosen_scores`, R(x, y⁻) → `rejected_scores`, (B,) each.
    Returns the per-pair loss (B,). `logsigmoid` keeps it finite for large differences.
    """
    check_same_shape("chosen_scores", chosen_scores, rejected_scores=rejected_scores)
    return -F.logsigmoid(chosen_scores - rejected_scores)


@implements("IS-2")
def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the real tokens of each reply   (IS-2, note 002).

    Treating a whole reply as one action (note 002's LLM view), its probability is the product of
    its tokens' probabilities, so the sequence ratio π_θ(y|x)/π_old(y|x) is exp(Σ_t token
    log-ratios): pass the result to `ratio_surrogate`. Shapes: `token_logprobs` (B, T), `mask`
    (B, T) or None; returns (B,).
    """
    return masked_sum(token_logprobs, mask, dim=-1)


# ---------------------------------------------------------------------------------------------
# Masked reductions
# ---------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Σ x·mask over `dim` (all dims when None)."""
    if mask is None:
        return x.sum() if dim is None else x.sum(dim=dim)
    check_same_shape("x", x, mask=mask)
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Mean of x over the positions where `mask` is 1 (over `dim`, or all dims when None).

    A row with no real position gives 0, not NaN.
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased variance of x over the positions where `mask` is 1 (a scalar)."""
    if mask is None:
        return x.var() if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    mean = masked_mean(x, mask)
    count = mask.to(x.dtype).sum()
    return masked_sum((x - mean) ** 2, mask) / (count - 1).clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − mean) / std over the masked positions (advantage normalisation, reward whitening).

    With `shift_mean=False` only the scale changes (used for rewards, whose sign matters).
    Padding positions come back as 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else whitened * mask.to(x.dtype)


LossReduction = Literal["token_mean", "seq_mean", "constant", "minibatch_token_mean"]
LOSS_REDUCTIONS = get_args(LossReduction)


@implements("GR-2", "DA-3", "DR-1", "GR-3")
def reduce_loss(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loss_reduction: str = "token_mean",
    loss_constant: float | None = None,
    n_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar; the choices of the GRPO family.

        "seq_mean"   (GRPO, GR-2):     (1/B) Σ_i (1/|o_i|) Σ_t x_{i,t}
        "token_mean" (DAPO, DA-3):     (1/N_tok) Σ_i Σ_t x_{i,t},   N_tok = `n_tokens`, by default Σ_i |o_i|
        "constant"   (Dr. GRPO, DR-1): (1/(B·C)) Σ_i Σ_t x_{i,t},   C = `loss_constant` (e.g. max length)
        "minibatch_token_mean":        (1/Σ_i |o_i|) Σ_i Σ_t x_{i,t} of this tensor, always

    |o_i| is the number of real tokens of reply i (Σ_t mask). Under "seq_mean" each token of a
    long reply weighs 1/|o_i|, less than a token of a short reply: a long wrong answer is
    penalised less per token, the length bias of GR-3. "token_mean" weighs every token the same
    in a batch; "constant" also makes the weight independent of the batch's lengths.

    DAPO's token mean is over every token of the *sampled batch*. When the batch is trained in
    minibatches, one optimiser step each (`core.ppo.ppo_update`), the caller passes `n_tokens` =
    the batch's token count / the number of minibatches: each minibatch's sum is then its share
    of the batch's token mean, a minibatch of long replies weighs more than one of short replies,
    and the minibatch losses add up (over an epoch, ÷ the number of minibatches) to the token mean
    of the whole batch — what DAPO's reference and other libraries compute. Dividing each
    minibatch by its own token count instead is "minibatch_token_mean": every minibatch weighs the
    same whatever its tokens, so a token of a minibatch of short replies weighs more; the two
    agree when the batch is one minibatch or every minibatch holds as many tokens.

    Shapes: `x` (B, T) or (N,); `mask` like `x` or None (all real). Without a mask and for 1-D
    `x` every mode is the plain mean (each "reply" is one action), unless "token_mean" is given
    `n_tokens`.
    """
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction (the loss reduction mode) must be one of {LOSS_REDUCTIONS}, "
                         f"got {loss_reduction!r}")
    if loss_reduction == "token_mean" and n_tokens is not None:
        if float(n_tokens) <= 0:
            raise ValueError(f"n_tokens must be > 0, got {float(n_tokens)!r}")
        real = x if mask is None else x * mask.to(x.dtype)
        if mask is not None:
            check_same_shape("x", x, mask=mask)
        return real.sum() / n_tokens
    if mask is None and (loss_reduction != "constant" or x.dim() < 2):
        return x.mean()  # every position is real: all modes but "constant" reduce to the plain mean
    if mask is None:
        mask = torch.ones_like(x)
    check_same_shape("x", x, mask=mask)
    mask = mask.to(x.dtype)
    if loss_reduction in ("token_mean", "minibatch_token_mean") or x.dim() < 2:
        return masked_mean(x, mask)
    if loss_reduction == "seq_mean":
        lengths = mask.sum(dim=-1).clamp(min=1.0)  # (B,)
        return ((x * mask).sum(dim=-1) / lengths).mean()
    if loss_constant is None or loss_constant <= 0:
        raise ValueError(f"loss reduction 'constant' needs a positive constant (loss_constant), got {loss_constant!r}")
    n_rows = x.reshape(-1, x.shape[-1]).shape[0]
    return (x * mask).sum() / (n_rows * loss_constant)


# ---------------------------------------------------------------------------------------------
# Diagnostics that come back with the PPO loss
# ---------------------------------------------------------------------------------------------


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
