"""Rollout storage, preallocated on the device where the environments step.

Time-major like the PPO paper's Algorithm 1 (N actors × T steps): every field is (T, N, ...).
The advantage functions of `core.advantages` take time *last*, so `compute_advantages`
transposes on the way in and out. Nothing here leaves the device: on CUDA a whole rollout is
collected and turned into a training batch without a host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.advantages import gae

__all__ = ["RolloutBuffer"]


@dataclass
class RolloutBuffer:
    """One rollout of `num_steps` × `num_envs` transitions.

    Per step t the loop writes: `obs[t]` (the observation the action was chosen from),
    `actions[t]`, `logprobs[t]` (log π_old), `values[t]` (V(s_t)), then after stepping
    `rewards[t]`, `terminations[t]`, `truncations[t]` and `next_values[t]` = V(s_{t+1}) of the
    state step t led to: the final observation's value when the episode ended there
    (gymnasium's `final_obs`), so a truncated episode bootstraps correctly (AD-5).
    """

    obs: torch.Tensor  # (T, N, *obs_shape)
    actions: torch.Tensor  # (T, N, *action_shape)
    logprobs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    next_values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N)
    terminations: torch.Tensor  # (T, N), 1.0 where the episode reached a terminal state
    truncations: torch.Tensor  # (T, N), 1.0 where a time or score limit cut the episode

    @classmethod
    def allocate(
        cls,
        num_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        *,
        action_shape: tuple[int, ...] = (),
        obs_dtype: torch.dtype = torch.float32,
        action_dtype: torch.dtype = torch.long,
        device: torch.device | str = "cpu",
    ) -> RolloutBuffer:
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"num_steps and num_envs must be ≥ 1, got {num_steps} and {num_envs}")

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            obs=zeros(num_steps, num_envs, *obs_shape, dtype=obs_dtype),
            actions=zeros(num_steps, num_envs, *action_shape, dtype=action_dtype),
            logprobs=zeros(num_steps, num_envs),
            values=zeros(num_steps, num_envs),
            next_values=zeros(num_steps, num_envs),
            rewards=zeros(num_steps, num_envs),
            terminations=zeros(num_steps, num_envs),
            truncations=zeros(num_steps, num_envs),
        )

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    def compute_advantages(self, *, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE(λ) advantages and λ-return targets, both (T, N) (AD-4, AD-5, AD-7)."""
        advantages = gae(
            self.rewards.T, self.values.T, gamma=gamma, gae_lambda=gae_lambda,
            next_values=self.next_values.T, terminations=self.terminations.T, truncations=self.truncations.T,
        ).T  # (T, N)
        return advantages, advantages + self.values

    def flatten(self, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch `core.ppo.ppo_update` expects: every field flattened to T·N rows."""
        rows = self.num_steps * self.num_envs
        return {
            "obs": self.obs.reshape(rows, *self.obs.shape[2:]),
            "actions": self.actions.reshape(rows, *self.actions.shape[2:]),
            "logprobs": self.logprobs.reshape(rows),
            "values": self.values.reshape(rows),
            "advantages": advantages.reshape(rows),
            "returns": returns.reshape(rows),
        }
