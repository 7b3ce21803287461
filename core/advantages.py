"""Advantage estimators: TD residuals, k-step advantages, GAE(λ), λ-returns, group baselines.

Conventions shared by every function here
-----------------------------------------
* Time is the **last** dimension: tensors are shaped `(..., T)` and batched over any leading
  dimensions (`(N, T)` for N parallel environments, `(B, T)` for B replies of a language model).
  A game loop that stores `(T, N)` passes `x.T`.
* `values[..., t]` is V(s_t), the critic's value of the state the action at step t was taken in.
* `next_values[..., t]` is V(s_{t+1}) of the state that step t *led to*. When the episode ended
  at step t this is the value of the final observation (gymnasium's `final_obs`), never the
  first observation of the next episode.
* `terminations[..., t] = 1` when step t reached a terminal state: nothing follows it, so the
  bootstrap γV(s_{t+1}) is dropped (the future is worth 0).
* `truncations[..., t] = 1` when the episode was cut at step t by a time limit: the state
  still had a future, so the bootstrap γV(s_{t+1}) is **kept** (AD-5). Either flag stops the
  GAE recursion, so advantages never leak from one episode into the next.
* `mask` (same shape, 1 = real token, 0 = padding, right-padded) is the token-sequence form:
  with `mask` given and `next_values`/`terminations` left out, the sequence ends terminally at
  its last real token and the value after it is 0.

Sources: notes 003 (PPO derived: k-step estimates, GAE), 004 (PG to GRPO: critic target,
Q = r + γV); Schulman et al.
2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation"; Shao et al.
2024 (GRPO); Yu et al. 2025 (DAPO); Liu et al. 2025 (Dr. GRPO).
"""

from __future__ import annotations

import torch

from core.catalog import implements
from core.checks import check_finite, check_probability, check_same_shape

__all__ = [
    "td_residuals",
    "k_step_advantages",
    "gae",
    "gae_weighted_sum",
    "lambda_returns",
    "discounted_returns",
    "group_advantages",
    "informative_groups",
    "overlong_penalty",
    "last_token_mask",
]


def last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 at the last real position of each right-padded row of `mask` (..., T), else 0.

    Rows with no real token get all zeros.
    """
    mask = mask.to(torch.bool)
    lengths = mask.sum(dim=-1, keepdim=True)  # (..., 1)
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    return ((positions == lengths - 1) & mask).to(torch.float32)


def _episode_inputs(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor | None,
    terminations: torch.Tensor | None,
    truncations: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill in next_values / terminations / episode-end flags from the conventions above.

    Returns `(next_values, not_terminal, not_done)`, each (..., T) in the rewards' dtype.
    """
    check_same_shape(
        "rewards", rewards, values=values, next_values=next_values,
        terminations=terminations, truncations=truncations, mask=mask,
    )
    check_finite(rewards=rewards, values=values, next_values=next_values)
    dtype = rewards.dtype
    if next_values is None:
        # A sequence that ends at its last position: V(s_{t+1}) is the next position's value,
        # and 0 after the end (the reply is over).
        next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
        if terminations is None:
            if mask is not None:
                terminations = last_token_mask(mask)
            else:
                terminations = torch.zeros_like(rewards)
                terminations[..., -1] = 1.0
    if terminations is None:
        terminations = torch.zeros_like(rewards)
    terminations = terminations.to(dtype)
    truncations = torch.zeros_like(rewards) if truncations is None else truncations.to(dtype)
    not_terminal = 1.0 - terminations
    not_done = 1.0 - torch.clamp(terminations + truncations, max=1.0)
    return next_values, not_terminal, not_done


@implements("AD-2")
def td_residuals(
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    next_values: torch.Tensor | None = None,
    terminations: torch.Tensor | None = None,
    truncations: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD residuals δ_t = R_t + γ V(s_{t+1}) − V(s_t)   (AD-2, notes 003 and 004).

    At a termination the bootstrap is dropped: δ_t = R_t − V(s_t). R_t + γV(s_{t+1}) alone is
    the one-step estimate Q^(1)_t of Q(s_t, a_t) (note 004: "Q = r + γV").

    Symbols → arguments: R → `rewards`, V(s_t) → `values`, V(s_{t+1}) → `next_values`,
    γ → `gamma`. Shapes: all (..., T); returns (..., T).
    """
    check_probability("gamma", gamma)
    next_values, not_terminal, _ = _episode_inputs(
        rewards, values, next_values, terminations, truncations, mask
    )
    delta = rewards + gamma * not_terminal * next_values - values
    return delta if mask is None else delta * mask.to(delta.dtype)


@implements("AD-3")
def k_step_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    *,
    gamma: float,
    k: int,
    terminal_at_end: bool = False,
) -> torch.Tensor:
    """k-step advantage A^(k)_t = Σ_{i<k} γ^i R_{t+i} + γ^k V(s_{t+k}) − V(s_t)   (AD-3, note 003).

    For one episode segment of length T (no episode boundary inside it). When fewer than k
    steps remain (t + k > T) the sum stops at the end of the segment and bootstraps from
    `next_values[..., T-1]`, or from 0 when `terminal_at_end`. This is computed from rewards
    directly, the first form of AD-3; the second form Σ_{l<k} γ^l δ_{t+l} is what the tests
    compare it with.

    Symbols → arguments: R → `rewards` (..., T), V(s_t) → `values` (..., T), V(s_{t+1}) →
    `next_values` (..., T), γ → `gamma`, k → `k` (≥ 1). Returns (..., T).
    """
    check_probability("gamma", gamma)
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    check_same_shape("rewards", rewards, values=values, next_values=next_values)
    T = rewards.shape[-1]
    # Values V(s_1..s_T) of the states after each step; the last one may be terminal.
    after = next_values.clone()
    if terminal_at_end:
        after[..., -1] = 0.0
    out = torch.empty_like(rewards)
    for t in range(T):
        steps = min(k, T - t)
        discounts = gamma ** torch.arange(steps, dtype=rewards.dtype, device=rewards.device)
        reward_sum = (rewards[..., t : t + steps] * discounts).sum(dim=-1)
        out[..., t] = reward_sum + gamma**steps * after[..., t + steps - 1] - values[..., t]
    return out


@implements("AD-4", "AD-5")
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    next_values: torch.Tensor | None = None,
    terminations: torch.Tensor | None = None,
    truncations: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GAE(λ) by the backward recursion   (AD-4, AD-5; note 003; Schulman et al. 2016, eq. 16).

        δ_t = R_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)
        Â_t = δ_t + γ λ (1 − done_t) Â_{t+1},      done_t = term_t or trunc_t

    which equals Σ_{l≥0} (γλ)^l δ_{t+l} inside an episode. λ = 0 gives δ_t (low variance, biased
    by V); λ = 1 gives the Monte Carlo return minus V(s_t) (unbiased, high variance).

    At a truncation the recursion stops (the next step belongs to a new episode) but δ_t keeps
    γ V(final observation): the episode was cut by a clock, not finished. At a termination the
    bootstrap is zero. CleanRL's `ppo.py` treats both as termination, which under-values states
    near a time limit.

    Symbols → arguments: R → `rewards`, V(s_t) → `values`, V(s_{t+1}) → `next_values`,
    γ → `gamma`, λ → `gae_lambda`. Shapes (..., T), time last; see the module docstring for the
    flags and the token-sequence `mask`. Returns Â (..., T), zero where `mask` is 0. The critic
    target (λ-return, AD-7) is `Â + values`.
    """
    check_probability("gamma", gamma)
    check_probability("gae_lambda", gae_lambda)
    next_values, not_terminal, not_done = _episode_inputs(
        rewards, values, next_values, terminations, truncations, mask
    )
    delta = rewards + gamma * not_terminal * next_values - values  # (..., T)
    decay = gamma * gae_lambda * not_done  # (..., T): how much of Â_{t+1} flows back into Â_t
    advantages = torch.empty_like(delta)
    running = torch.zeros_like(delta[..., 0])  # (...,)
    for t in range(delta.shape[-1] - 1, -1, -1):
        running = delta[..., t] + decay[..., t] * running
        advantages[..., t] = running
    if mask is not None:
        advantages = advantages * mask.to(advantages.dtype)
    return advantages


@implements("AD-4")
def gae_weighted_sum(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    terminal_at_end: bool = False,
) -> torch.Tensor:
    """GAE as the explicit (1 − λ)-weighted sum of k-step advantages   (AD-4, note 003).

        Â_t = (1 − λ) Σ_{k≥1} λ^{k−1} A^(k)_t

    For one episode segment of T steps: once k reaches the steps left (n = T − t), A^(k)_t stops
    changing, so the tail of the series sums to λ^{n−1} A^(n)_t and
        Â_t = (1 − λ) Σ_{k=1}^{n−1} λ^{k−1} A^(k)_t + λ^{n−1} A^(n)_t.
    This is the definition the backward recursion `gae` implements in O(T); it costs O(T²) and
    exists for lessons and tests. Arguments as in `k_step_advantages`.
    """
    check_probability("gae_lambda", gae_lambda)
    T = rewards.shape[-1]
    k_step = torch.stack(
        [
            k_step_advantages(rewards, values, next_values, gamma=gamma, k=k,
                              terminal_at_end=terminal_at_end)
            for k in range(1, T + 1)
        ],
        dim=0,
    )  # (K=T, ..., T): k_step[k-1, ..., t] = A^(k)_t
    out = torch.empty_like(rewards)
    for t in range(T):
        n = T - t
        weights = [(1 - gae_lambda) * gae_lambda ** (k - 1) for k in range(1, n)] + [gae_lambda ** (n - 1)]
        out[..., t] = sum(w * k_step[k, ..., t] for k, w in enumerate(weights))
    return out


@implements("AD-7")
def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    next_values: torch.Tensor | None = None,
    terminations: torch.Tensor | None = None,
    truncations: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ-returns, the critic's regression target V^targ   (AD-7; note 004; Sutton & Barto 12.1).

        G^λ_t = R_t + γ [(1 − λ) V(s_{t+1}) + λ G^λ_{t+1}]

    with G^λ_{t+1} replaced by V(s_{t+1}) at an episode end (truncation: keep the bootstrap) and
    the whole bracket by 0 at a termination. G^λ_t = Â_t + V(s_t) with Â from `gae`; this
    separate recursion is how the tests check that identity. Arguments as in `gae`.
    """
    check_probability("gamma", gamma)
    check_probability("gae_lambda", gae_lambda)
    next_values, not_terminal, not_done = _episode_inputs(
        rewards, values, next_values, terminations, truncations, mask
    )
    out = torch.empty_like(rewards)
    future = next_values[..., -1]  # G^λ after the last step: just the bootstrap value
    for t in range(rewards.shape[-1] - 1, -1, -1):
        # Inside an episode the next step's λ-return continues; at an episode end only V remains.
        g_next = not_done[..., t] * future + (1 - not_done[..., t]) * next_values[..., t]
        mixed = (1 - gae_lambda) * next_values[..., t] + gae_lambda * g_next
        future = rewards[..., t] + gamma * not_terminal[..., t] * mixed
        out[..., t] = future
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out


def discounted_returns(
    rewards: torch.Tensor,
    *,
    gamma: float,
    dones: torch.Tensor | None = None,
    bootstrap: torch.Tensor | None = None,
) -> torch.Tensor:
    """Discounted reward-to-go G_t = Σ_{l≥0} γ^l R_{t+l} within an episode (PG-8's Ψ choices 1–2).

    `dones[..., t] = 1` ends the sum after step t; `bootstrap` (...,) is added as γ^{T−t}·value
    after the last step (0 by default, a finished episode). Shapes: `rewards` (..., T).
    """
    check_probability("gamma", gamma)
    not_done = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    running = torch.zeros_like(rewards[..., 0]) if bootstrap is None else bootstrap.to(rewards.dtype)
    out = torch.empty_like(rewards)
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * not_done[..., t] * running
        out[..., t] = running
    return out


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
