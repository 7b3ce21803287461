"""A NumPy vector env seen through torch tensors on a device: the boundary between gymnasium and
the trainer for every env that does not step as tensors itself (CartPole, MuJoCo, Atari through
gymnasium's wrappers). `envs.vector.make_vector_env` and `envs.atari` build it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from core.device import resolve_device

__all__ = ["TorchVectorEnv"]


class TorchVectorEnv(VectorEnv):
    """A NumPy vector env with SAME_STEP autoreset, seen through torch tensors on a device.

    Returns what `BatchedFlappyBird` returns: obs, reward (float32), terminated, truncated
    (bool) as tensors; `info["final_obs"]` is a full tensor (the final observation where an
    episode ended, the returned observation elsewhere) with `info["_final_obs"]`;
    `info["final_info"]` has "episode_return" (the unclipped game score) and
    "episode_length" (in emulator frames), float32, for the envs in `info["_final_info"]`:
    those whose whole game ended (from `RecordEpisodeStatistics`; with episodic life these
    are fewer than the ended episodes).
    """

    def __init__(self, env: VectorEnv, device: Any):
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError("TorchVectorEnv needs a vector env with SAME_STEP autoreset")
        self.env = env
        self.device = resolve_device(device)
        self.num_envs = env.num_envs
        self.metadata = dict(env.metadata)
        self.render_mode = env.render_mode
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    def _tensor(self, array, dtype=None):
        array = np.asarray(array)
        if dtype is None and array.dtype == np.float64:  # MuJoCo's float64 observations: the networks use float32
            dtype = torch.float32
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._tensor(obs), info

    def step(self, actions):
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        obs, reward, terminated, truncated, info = self.env.step(actions)
        done = np.logical_or(terminated, truncated)
        final_obs = np.array(obs)  # a copy; NumPy, then one conversion to a tensor
        for i in np.flatnonzero(done):
            final_obs[i] = info["final_obs"][i]
        # Whole games that ended this step: RecordEpisodeStatistics put "episode" in their
        # step info, which SAME_STEP autoreset moved to info["final_info"].
        episode = info.get("final_info", {}).get("episode")
        if episode is None:
            game_over = np.zeros(self.num_envs, bool)
            ep_return = ep_length = np.zeros(self.num_envs, np.float32)
        else:
            game_over = np.asarray(info["final_info"]["_episode"], bool)
            ep_return = np.where(game_over, episode["r"], 0).astype(np.float32)
            ep_length = np.where(game_over, episode["l"], 0).astype(np.float32)
        out_info = {
            "final_obs": self._tensor(final_obs),
            "_final_obs": self._tensor(done),
            "final_info": {
                "episode_return": self._tensor(ep_return),
                "episode_length": self._tensor(ep_length),
            },
            "_final_info": self._tensor(game_over),
        }
        return (self._tensor(obs), self._tensor(reward, torch.float32), self._tensor(terminated),
                self._tensor(truncated), out_info)

    def close(self, **kwargs):
        self.env.close(**kwargs)
        self.closed = True
