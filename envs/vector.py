"""One tensor interface over every environment the agent trains on.

The PPO loop sees `reset(seed) -> obs` and `step(actions) -> Step`, all torch tensors on the
training device, whatever runs underneath:

- our batched Flappy Bird, which already steps as tensors on the device (no host round trip);
- any other gymnasium id through a gymnasium vector env (`SyncVectorEnv`) in SAME_STEP
  autoreset mode, converted to tensors at the boundary.

Autoreset: when an episode ends at step t, `Step.obs` is already the first observation of the
next episode and `Step.final_obs` holds the observation the episode ended in (equal to `obs`
where nothing ended). The loop bootstraps a truncated episode from V(final_obs) (AD-5).
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

__all__ = ["Step", "GymVectorEnv", "make_vector_env", "FLAPPY_ALIASES", "resolve_env_id", "SUPPORTED_ACTION_SPACES"]

FLAPPY_ALIASES = {
    "flappy": "proximal/FlappyBird-v0",
    "flappy-pixels": "proximal/FlappyBirdPixels-v0",
}
SUPPORTED_ACTION_SPACES = "Discrete (one categorical action per step)"


class Step(NamedTuple):
    obs: torch.Tensor  # (N, *obs_shape): next observations, already reset where an episode ended
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool
    final_obs: torch.Tensor  # (N, *obs_shape): the last observation of each episode that ended, else obs
    episode_return: torch.Tensor  # (N,) undiscounted return of episodes that ended here (raw game reward)
    episode_score: torch.Tensor  # (N,) game score of episodes that ended here (pipes; = return elsewhere)


def resolve_env_id(env_id: str) -> str:
    """Expand our short aliases and check the id is registered (importing Atari if needed)."""
    env_id = FLAPPY_ALIASES.get(env_id, env_id)
    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
    if env_id.startswith("proximal/"):
        import envs.flappy_bird  # noqa: F401  (registers our ids)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if env_id.split("/")[-1].split("-")[0].lower() in k.lower()][:5]
        hint = f"; similar registered ids: {close}" if close else ""
        raise ValueError(
            f"unknown env id {env_id!r}{hint}. Our ids: {sorted(FLAPPY_ALIASES)} or their full names; "
            "third-party ids need their package imported first"
        )
    return env_id


class GymVectorEnv:
    """A gymnasium vector env (SAME_STEP autoreset) behind the tensor interface."""

    def __init__(self, vec_env: gym.vector.VectorEnv, device: torch.device):
        if not isinstance(vec_env.single_action_space, gym.spaces.Discrete):
            raise ValueError(
                f"the agent supports {SUPPORTED_ACTION_SPACES} action spaces; this env has "
                f"{vec_env.single_action_space}"
            )
        self.env, self.device = vec_env, device
        self.num_envs = vec_env.num_envs
        self.single_observation_space = vec_env.single_observation_space
        self.single_action_space = vec_env.single_action_space
        self._returns = np.zeros(self.num_envs)

    def _tensor(self, array, dtype=None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), device=self.device, dtype=dtype)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs, _ = self.env.reset(seed=seed)
        self._returns[:] = 0.0
        return self._tensor(obs)

    def step(self, actions: torch.Tensor) -> Step:
        obs, reward, terminated, truncated, info = self.env.step(actions.cpu().numpy())
        done = terminated | truncated
        # Raw episode returns: RecordEpisodeStatistics (inside the Atari builder, before reward
        # clipping and across lives) knows the game's true return; otherwise sum rewards here.
        self._returns += reward
        episode_return = np.where(done, self._returns, 0.0)
        final_info = info.get("final_info", {})
        if "episode" in final_info and "_episode" in final_info:
            episode_return = np.where(final_info["_episode"], final_info["episode"]["r"], 0.0)
        self._returns[done] = 0.0
        final_obs = obs
        if "_final_obs" in info and info["_final_obs"].any():
            final_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        ret = self._tensor(episode_return, torch.float32)
        return Step(self._tensor(obs), self._tensor(reward, torch.float32), self._tensor(terminated),
                    self._tensor(truncated), self._tensor(final_obs), ret, ret)

    def close(self) -> None:
        self.env.close()


def make_vector_env(env_id: str, num_envs: int, device: torch.device, **env_kwargs):
    """Build `num_envs` copies of `env_id` behind the tensor interface (see the module docstring)."""
    env_id = resolve_env_id(env_id)
    if env_id.startswith("proximal/"):
        from envs.flappy_bird import make_batched_flappy_for_agent

        return make_batched_flappy_for_agent(env_id, num_envs, device, **env_kwargs)
    autoreset = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    if env_id.startswith("ALE/"):
        from envs.atari import make_atari_vector_env

        return GymVectorEnv(make_atari_vector_env(env_id, num_envs, vector_kwargs=autoreset, **env_kwargs), device)
    vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", vector_kwargs=autoreset, **env_kwargs)
    return GymVectorEnv(vec, device)
