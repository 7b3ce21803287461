"""GAE(λ), the advantage estimator the trainers run (`core.returns` holds the estimates it is
derived from, `core.group` the group baselines of GRPO).

Conventions, shared with `core.returns`
---------------------------------------
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

Sources: note 003 (PPO derived: k-step estimates, GAE); Schulman et al. 2016, "High-Dimensional
Continuous Control Using Generalized Advantage Estimation".
"""

from __future__ import annotations

import torch

from core.catalog import implements
from core.checks import check_finite, check_probability, check_same_shape

__all__ = ["gae", "last_token_mask"]


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


