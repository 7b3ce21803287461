"""Preference losses: Bradley–Terry (the reward model's, RM-1), and DPO, IPO and KTO — RLHF without a
reward model or a sampling loop.

All three work on **sequence log-probabilities** log π(y|x) = Σ_t log π(y_t|x, y_<t) (IS-2,
`sequence_logprobs`) of a trained policy π_θ and a frozen reference π_ref (the SFT
model), and on the log-ratio

    r_θ(x, y) = log π_θ(y|x) − log π_ref(y|x)

which, times β, is the *implicit reward* of RM-2: the optimum of max E[r] − β KL[π‖π_ref] is
π*(y|x) ∝ π_ref(y|x) exp(r(x,y)/β), so r(x,y) = β log π*(y|x)/π_ref(y|x) + β log Z(x).
Plugging it into Bradley–Terry (RM-1) the unknown log Z(x) cancels in the difference of a pair:
that is DPO. Note 004 (PG to GRPO) describes DPO as "computing a KL divergence" (erratum E7): the loss is a
log-sigmoid of a difference of log-ratios; no KL is computed anywhere.

Shapes: every argument is (B,), one entry per pair (DPO, IPO) or per example (KTO), except the
(B, T) token log-probs `sequence_logprobs` sums. Every loss returns the per-example loss (B,); reduce it with `.mean()`.

Sources: notes 001 (PPO for LLMs), 002 (PPO paper notes), 004 (PG to GRPO); Rafailov et al. 2023
(DPO); Azar et al. 2023 (IPO, "ΨPO"); Ethayarajh et al. 2024 (KTO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.catalog import implements
from core.checks import check_finite, check_positive, check_same_shape
from core.masked import masked_sum

__all__ = [
    "bradley_terry_loss",
    "sequence_logprobs",
    "implicit_rewards",
    "preference_margin",
    "dpo_loss",
    "ipo_loss",
    "kto_reference_point",
    "kto_loss",
]


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
    log-ratios): pass the result to `core.losses.ratio_surrogate`. Shapes: `token_logprobs` (B, T), `mask`
    (B, T) or None; returns (B,).
    """
    return masked_sum(token_logprobs, mask, dim=-1)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """β · (log π_θ(y|x) − log π_ref(y|x)): the reward a policy implies (RM-2 solved for r).

    Symbols → arguments: log π_θ(y|x) → `policy_logps` (B,), log π_ref(y|x) → `ref_logps` (B,),
    β → `beta`. Returns (B,). Up to the per-prompt constant β log Z(x), which cancels in pairs.
    """
    check_positive("beta", beta)
    check_same_shape("policy_logps", policy_logps, ref_logps=ref_logps)
    return beta * (policy_logps - ref_logps)


def preference_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l): the pair's log-ratio difference.

    The quantity DPO pushes through a sigmoid and IPO regresses to 1/(2τ). y_w is the preferred
    (chosen) reply, y_l the rejected one. All arguments (B,); returns (B,).
    """
    check_same_shape(
        "policy_chosen_logps",
        policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_finite(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


@implements("DP-1")
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO   L = −log σ(β [log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l)])   (DP-1, note 004).

    It is the Bradley–Terry loss (RM-1) with the implicit rewards β log π_θ/π_ref in place of
    a reward model's scores — the code says so literally. Its gradient,
    −β σ(−β h) [∇log π_θ(y_w) − ∇log π_θ(y_l)], raises the chosen reply and lowers the rejected
    one, weighted by how wrongly the implicit reward ranks the pair.

    Symbols → arguments: π_θ(y_w), π_θ(y_l) → `policy_chosen_logps`, `policy_rejected_logps`;
    π_ref(·) → `ref_chosen_logps`, `ref_rejected_logps` (sequence log-probs, (B,) each);
    β → `beta` > 0 (smaller β lets the policy move further from π_ref). Returns (B,).
    """
    check_positive("beta (DPO)", beta)
    preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return bradley_terry_loss(
        implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta),
        implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta),
    )


@implements("DP-2")
def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """IPO   L = (h − 1/(2τ))²,  h = the log-ratio difference of `preference_margin`   (DP-2).

    DPO's sigmoid keeps pushing h → ∞ on pairs labelled the same way every time (it never
    saturates), which drives the policy arbitrarily far from π_ref; IPO regresses h to the
    finite target 1/(2τ) instead, so τ acts as the regulariser (larger τ, smaller margin).

    Symbols → arguments: as `dpo_loss`, τ → `tau` > 0. Returns (B,). Here h uses sums of token
    log-probs (IS-2); TRL's "ipo" averages them over tokens, which changes the scale of τ.
    """
    check_positive("tau (IPO)", tau)
    h = preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (h - 1.0 / (2.0 * tau)) ** 2


def kto_reference_point(mismatched_policy_logps: torch.Tensor, mismatched_ref_logps: torch.Tensor) -> torch.Tensor:
    """z₀ = max(0, KL estimate), detached: KTO's reference point (DP-3).

    KTO estimates KL[π_θ‖π_ref] on the batch by the mean log-ratio of *mismatched* pairs
    (prompt x_i with the reply y_j of another example), so the estimate does not reward the
    very replies being judged; it is clamped at zero (a KL cannot be negative, though this k1
    estimate can be, KL-2) and carries no gradient (the KTO paper, §4).

    Shapes: (B,) each. Returns a scalar tensor.
    """
    check_same_shape("mismatched_policy_logps", mismatched_policy_logps, mismatched_ref_logps=mismatched_ref_logps)
    if mismatched_policy_logps.numel() == 0:
        raise ValueError("KTO's reference point needs at least one mismatched pair, got none")
    check_finite(mismatched_policy_logps=mismatched_policy_logps, mismatched_ref_logps=mismatched_ref_logps)
    return (mismatched_policy_logps - mismatched_ref_logps).mean().clamp(min=0.0).detach()


@implements("DP-3")
def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO   L = λ_y − v(x, y)   (DP-3, note 004), one label per reply instead of a pair:

        r_θ = log π_θ(y|x) − log π_ref(y|x),   z₀ = `kto_reference_point(...)`
        v = λ_D σ(β (r_θ − z₀))   if y is desirable
        v = λ_U σ(β (z₀ − r_θ))   if y is undesirable

    Kahneman–Tversky's value function: gains and losses are judged against the reference point
    z₀ and saturate (the sigmoid), and λ_D, λ_U weigh the two kinds (set λ_D n_D ≈ λ_U n_U when
    the classes are unbalanced; the paper keeps λ_D n_D / λ_U n_U in [1, 4/3]).

    Symbols → arguments: log π_θ(y|x) → `policy_logps` (B,), log π_ref(y|x) → `ref_logps` (B,),
    "y is desirable" → `desirable` (B,) bool, z₀ → `reference_point` (≥ 0, no gradient),
    β → `beta` > 0, λ_D → `desirable_weight`, λ_U → `undesirable_weight`. Returns (B,).
    """
    check_positive("beta (KTO)", beta)
    check_positive("desirable_weight", desirable_weight)
    check_positive("undesirable_weight", undesirable_weight)
    check_same_shape("policy_logps", policy_logps, ref_logps=ref_logps, desirable=desirable)
    check_finite(policy_logps=policy_logps, ref_logps=ref_logps)
    z0 = torch.as_tensor(reference_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    if bool(z0 < 0):
        raise ValueError(f"KTO's reference point z₀ is a clamped KL and must be ≥ 0, got {float(z0)}")
    log_ratio = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    gain = desirable_weight * torch.sigmoid(beta * (log_ratio - z0))
    loss_avoided = undesirable_weight * torch.sigmoid(beta * (z0 - log_ratio))
    weight = torch.where(
        desirable, torch.full_like(log_ratio, desirable_weight), torch.full_like(log_ratio, undesirable_weight)
    )
    value = torch.where(desirable, gain, loss_avoided)
    return weight - value

