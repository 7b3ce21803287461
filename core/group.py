"""Group-relative advantages and DAPO's batch shaping: GRPO, DAPO, Dr. GRPO.

A group is G replies sampled for one prompt; its mean reward is the baseline (PG-6), so no critic
is needed. `core.masked.reduce_loss` holds the family's loss reductions (GR-2, DA-3, DR-1) and
`llm.group` the training loop.

Sources: note 004 (PG to GRPO); Shao et al. 2024 (GRPO, DeepSeekMath); Yu et al. 2025 (DAPO);
Liu et al. 2025 (Dr. GRPO).
"""

from __future__ import annotations

import torch

from core.catalog import implements
from core.checks import check_finite

__all__ = ["group_advantages", "informative_groups", "overlong_penalty"]

@implements("GR-1", "DR-1")
def group_advantages(
    rewards: torch.Tensor, *, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages over the last dimension (G replies to one prompt).

        GRPO (GR-1):     Â_i = (r_i − mean(r_1..G)) / (std(r_1..G) + eps)
        Dr. GRPO (DR-1): Â_i =  r_i − mean(r_1..G)                  (`scale_by_std=False`)

    The group mean is the baseline (PG-6); no critic is needed. `std` is the unbiased sample
    standard deviation, as in the GRPO reference code and TRL. A group whose rewards are all
    equal gets Â = 0 for every reply: it carries no learning signal (DAPO's dynamic sampling
    drops such groups). Dr. GRPO removes the std because it up-weights groups whose rewards
    barely differ (too easy or too hard prompts).

    Symbols → arguments: r → `rewards` (..., G) with G ≥ 2. Returns (..., G). Sources: note 004;
    Shao et al. 2024 (DeepSeekMath); Liu et al. 2025 (Understanding R1-Zero-Like Training).
    """
    if rewards.shape[-1] < 2:
        raise ValueError(
            f"a group needs at least 2 replies for a relative advantage, got group size {rewards.shape[-1]}"
        )
    check_finite(rewards=rewards)
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


@implements("DA-2")
def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: keep a group only if its rewards are not all equal (DA-2).

    With a 0/1 verifier this is 0 < #correct < G. A group where every reply is right (or every
    one wrong) has Â = 0 for all its replies under GR-1 and DR-1, so it adds nothing to the
    gradient but still counts in the batch's average, shrinking the update; DAPO drops such
    groups and samples more prompts until the batch is full (the caller's loop does that).

    Symbols → arguments: r_{p,i} → `rewards` (P, G), P groups of G replies, G ≥ 2.
    Returns a bool mask (P,), True for groups to keep. Source: note 004; Yu et al. 2025, §3.2.
    """
    if rewards.dim() != 2 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be (groups, group_size) with at least one group, got {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(
            f"a group needs at least 2 replies for a relative advantage, got group size {rewards.shape[1]}"
        )
    check_finite(rewards=rewards)
    return (rewards != rewards[:, :1]).any(dim=1)


@implements("DA-4")
def overlong_penalty(lengths: torch.Tensor, max_length: int, cache_length: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward of each reply (DA-4):

        R_len(y) = 0                                  if |y| ≤ L_max − L_cache
                 = ((L_max − L_cache) − |y|) / L_cache if L_max − L_cache < |y| ≤ L_max
                 = −1                                 if |y| > L_max

    A linear ramp from 0 to −1 over the last `cache_length` tokens of the budget, continuous at
    both joints, so the policy learns to finish before the hard limit instead of being cut off
    by it (a cut-off reply's reward is noise: it might have been right with more room).

    Symbols → arguments: |y| → `lengths` (B,) reply lengths in tokens, L_max → `max_length`,
    L_cache → `cache_length` with 0 < L_cache ≤ L_max. Returns a float tensor (B,).
    Source: note 004; Yu et al. 2025, §3.4 (eq. 13).
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"overlong penalty needs 0 < cache_length ≤ max_length, got cache_length={cache_length}, "
            f"max_length={max_length}"
        )
    lengths = lengths.to(torch.get_default_dtype()) if not torch.is_floating_point(lengths) else lengths
    soft_start = max_length - cache_length
    ramp = (soft_start - lengths) / cache_length
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_length, torch.full_like(lengths, -1.0), penalty)
