"""Returns and advantage estimates by their definitions: reward-to-go, TD residuals, k-step
advantages, GAE as a weighted sum of k-step advantages, λ-returns.

The lessons derive GAE from these, and the tests check `core.advantages.gae` (the recursion
the trainers run) against them. Tensors are `(..., T)`, time last, with the flags and `mask` of
`core.advantages`'s conventions.

Sources: notes 003 (PPO derived: k-step estimates, GAE), 004 (PG to GRPO: critic target,
Q = r + γV); Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation"; Sutton & Barto, ch. 12.
"""

from __future__ import annotations

import torch

from core.advantages import _episode_inputs
from core.catalog import implements
from core.checks import check_probability, check_same_shape

__all__ = ["discounted_returns", "td_residuals", "k_step_advantages", "gae_weighted_sum", "lambda_returns"]

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
    separate recursion is how the tests check that identity. Arguments as in `core.advantages.gae`.
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
