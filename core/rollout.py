"""Rollout storage, preallocated on the device where the environments step.

Env-major, N actors × T steps: every field is `(N, T, ...)` and the loop writes step t as
`buffer.x[:, t] = ...`. The advantage functions of `core.advantages` take time *last*, so GAE
runs on the fields as they are, and `batch` flattens them to N·T rows with a reshape. Nothing
here leaves the device except one `nonzero` per rollout (which rows ended an episode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.advantages import gae

__all__ = ["RolloutBuffer"]


@dataclass
class RolloutBuffer:
    """One rollout of `num_envs` × `num_steps` transitions.

    Per step t the loop writes: `obs[:, t]` (the observation the action was chosen from),
    `actions[:, t]`, `logprobs[:, t]` (log π_old), `values[:, t]` (V(s_t)), then after stepping
    `rewards[:, t]`, `terminations[:, t]`, `truncations[:, t]` and `final_obs[:, t]`: the
    observation step t ended in where an episode ended there (gymnasium's `final_obs`; the
    next observation elsewhere, where it is not read).
    """

    obs: torch.Tensor  # (N, T, *obs_shape)
    actions: torch.Tensor  # (N, T, *action_shape)
    logprobs: torch.Tensor  # (N, T)
    values: torch.Tensor  # (N, T)
    rewards: torch.Tensor  # (N, T)
    terminations: torch.Tensor  # (N, T), 1.0 where the episode reached a terminal state
    truncations: torch.Tensor  # (N, T), 1.0 where a time or score limit cut the episode
    final_obs: torch.Tensor  # (N, T, *obs_shape), read only where terminations or truncations is 1

    @classmethod
    def allocate(
        cls,
        *,
        num_envs: int,
        num_steps: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...] = (),
        obs_dtype: torch.dtype = torch.float32,
        action_dtype: torch.dtype = torch.long,
        device: torch.device | str = "cpu",
    ) -> RolloutBuffer:
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"num_envs and num_steps must be ≥ 1, got {num_envs} and {num_steps}")

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        n, t = num_envs, num_steps
        return cls(
            obs=zeros(n, t, *obs_shape, dtype=obs_dtype),
            actions=zeros(n, t, *action_shape, dtype=action_dtype),
            logprobs=zeros(n, t),
            values=zeros(n, t),
            rewards=zeros(n, t),
            terminations=zeros(n, t),
            truncations=zeros(n, t),
            final_obs=zeros(n, t, *obs_shape, dtype=obs_dtype),
        )

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[1]

    @torch.no_grad()
    def next_values(self, critic: Callable[[torch.Tensor], torch.Tensor], last_obs: torch.Tensor) -> torch.Tensor:
        """V(s_{t+1}) of the state each step led to, (N, T).

        Where the episode went on, s_{t+1} is the next step's observation and its value is
        `values[:, t+1]`, already computed when the action was chosen; after the last step it
        is V(`last_obs`), one critic pass (CleanRL's `next_value`). Where the episode ended at
        step t, it is V(final observation): one critic pass over those rows only, gathered
        with one `nonzero` (the rollout's only host sync). A terminated row's value is then
        dropped by GAE; a truncated row's is its bootstrap (AD-5).

        `critic(obs (B, *obs_shape)) -> (B,)`; `last_obs` (N, *obs_shape).
        """
        next_values = torch.cat([self.values[:, 1:], critic(last_obs)[:, None]], dim=1)  # (N, T)
        ended = (self.terminations + self.truncations).nonzero(as_tuple=True)  # (k,), (k,) env and step
        if ended[0].numel() > 0:
            next_values[ended] = critic(self.final_obs[ended]).to(next_values.dtype)
        return next_values

    def batch(
        self,
        critic: Callable[[torch.Tensor], torch.Tensor],
        last_obs: torch.Tensor,
        *,
        gamma: float,
        gae_lambda: float,
    ) -> dict[str, torch.Tensor]:
        """The batch `core.ppo.ppo_update` expects, N·T rows (row n·T + t is env n's step t).

        Â = GAE(λ) over each env's steps with termination ≠ truncation (AD-4, AD-5), and the
        critic's target V^targ = Â + V (AD-7). `critic` and `last_obs`: see `next_values`.
        """
        next_values = self.next_values(critic, last_obs)  # (N, T)
        advantages = gae(self.rewards, self.values, gamma=gamma, gae_lambda=gae_lambda, next_values=next_values,
                         terminations=self.terminations, truncations=self.truncations)  # (N, T)
        rows = self.num_envs * self.num_steps
        return {
            "obs": self.obs.reshape(rows, *self.obs.shape[2:]),
            "actions": self.actions.reshape(rows, *self.actions.shape[2:]),
            "logprobs": self.logprobs.reshape(rows),
            "values": self.values.reshape(rows),
            "advantages": advantages.reshape(rows),
            "returns": (advantages + self.values).reshape(rows),
        }
