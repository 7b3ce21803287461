"""Observation and reward normalisation for continuous control, as tensor code on the device.

Two of the continuous-action details of "The 37 Implementation Details of PPO" (Huang et al.
2022; CleanRL's `ppo_continuous_action.py` uses gymnasium's `NormalizeObservation` and
`NormalizeReward` wrappers for them):

- observation normalisation: o ← clip((o − μ_o) / √(σ²_o + ε), −10, 10), with μ_o, σ²_o the
  running mean and variance of every observation seen (per feature);
- reward normalisation: r ← clip(r / √(σ²_G + ε), −10, 10), with σ²_G the running variance of
  the discounted return G_t = γ·G_{t−1} + r_t, reset to 0 when an episode ends. Only the scale
  changes, never the sign or the mean, so the optimal policy is the same.

`NormalizedEnv` wraps an `envs.vector.AgentEnv` (same `reset`/`step`) and keeps the statistics
as tensors on the env's device (no host sync per step). `Step.final_obs` is normalised with
the same statistics as `Step.obs`, so the bootstrap V(final obs) sees what the critic learned
on; the game's `episode_return` stays the raw, unnormalised one. `statistics()` /
`load_statistics()` carry μ, σ² and the counts into and out of a checkpoint; `frozen=True`
(evaluation) uses them without updating them.
"""

from __future__ import annotations

from typing import Any

import torch

from envs.vector import Step

__all__ = ["RunningMeanStd", "NormalizedEnv"]


class RunningMeanStd:
    """Mean and variance of every sample seen, updated a batch at a time (float64, on `device`).

    Chan et al.'s parallel update: with the batch's mean m_b, variance v_b (population) and size
    n_b, δ = m_b − μ, n = n_a + n_b: μ ← μ + δ·n_b/n, σ² ← (σ²·n_a + v_b·n_b + δ²·n_a·n_b/n)/n.
    The count starts at a tiny ε as in gymnasium, so the first batch sets μ, σ² almost exactly.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str, epsilon: float = 1e-4):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.full((), epsilon, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        """x (B, *shape): B new samples."""
        x = x.to(torch.float64)
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total) \
            / total
        self.count = total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["mean"].shape) != tuple(self.mean.shape):
            raise ValueError(f"normaliser statistics of shape {tuple(state['mean'].shape)} do not fit observations "
                             f"of shape {tuple(self.mean.shape)}")
        device = self.mean.device
        self.mean, self.var, self.count = (state[k].to(device, torch.float64) for k in ("mean", "var", "count"))


class NormalizedEnv:
    """An `AgentEnv` whose observations and/or rewards are normalised (see the module docstring).

    `obs`, `reward`: which to normalise; `gamma`: γ of the discounted return whose std scales
    the rewards (the run's γ); `clip`: the bound of both (10, CleanRL's); `epsilon`: ε under
    the square roots (1e-8); `frozen`: use the statistics without updating them.
    """

    def __init__(self, env: Any, *, obs: bool = True, reward: bool = True, gamma: float = 0.99, clip: float = 10.0,
                 epsilon: float = 1e-8, frozen: bool = False):
        self.env, self.gamma, self.clip, self.epsilon, self.frozen = env, gamma, clip, epsilon, frozen
        device = env.device
        self.obs_rms = RunningMeanStd(tuple(env.single_observation_space.shape), device) if obs else None
        self.return_rms = RunningMeanStd((), device) if reward else None
        self._returns = torch.zeros(env.num_envs, dtype=torch.float64, device=device)  # G of each env's episode

    def __getattr__(self, name: str) -> Any:  # num_envs, spaces, device, state_dict, close: the env's own
        return getattr(self.env, name)

    def _normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        rms = self.obs_rms
        return ((obs - rms.mean) / torch.sqrt(rms.var + self.epsilon)).clamp(-self.clip, self.clip).float()

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs = self.env.reset(seed=seed)
        self._returns.zero_()
        if self.obs_rms is None:
            return obs
        if not self.frozen:
            self.obs_rms.update(obs)
        return self._normalize_obs(obs)

    def step(self, actions: torch.Tensor) -> Step:
        step = self.env.step(actions)
        obs, final_obs, reward = step.obs, step.final_obs, step.reward
        if self.obs_rms is not None:
            if not self.frozen:
                self.obs_rms.update(obs)
            obs, final_obs = self._normalize_obs(obs), self._normalize_obs(final_obs)
        if self.return_rms is not None:
            self._returns = self._returns * self.gamma + reward
            if not self.frozen:
                self.return_rms.update(self._returns)
            reward = (reward / torch.sqrt(self.return_rms.var + self.epsilon)).clamp(-self.clip, self.clip).float()
            self._returns.masked_fill_(step.terminated | step.truncated, 0.0)
        return step._replace(obs=obs, final_obs=final_obs, reward=reward)

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """μ, σ² and counts of the normalisers in use, for a checkpoint."""
        return {name: rms.state_dict() for name, rms in (("obs", self.obs_rms), ("reward", self.return_rms))
                if rms is not None}

    def load_statistics(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, rms in (("obs", self.obs_rms), ("reward", self.return_rms)):
            if rms is None:
                continue
            if name not in state:
                raise ValueError(f"the checkpoint has no {name} normaliser statistics")
            rms.load_state_dict(state[name])
