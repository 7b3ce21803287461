"""One tensor interface over every environment the agent trains on.

The PPO loop sees `reset(seed) -> obs` and `step(actions) -> Step`, torch tensors on the
training device, whatever runs underneath:

- our batched Flappy Bird (`envs.flappy_bird.BatchedFlappyBird`), which steps as tensors on
  the device: on CUDA a rollout never copies anything to the host; on the CPU its C step
  kernel steps all envs in one call (`step_kernel`, "auto" by default);
- Atari through ale-py's own vector env (C++ threads, preprocessing built in) or the readable
  gymnasium-wrapper stack (`envs.atari`, `atari_backend`);
- any other gymnasium id (CartPole, Pendulum, MuJoCo, third-party ids) through a gymnasium
  vector env in SAME_STEP autoreset mode, converted to tensors at the boundary
  (`envs.torch_vector.TorchVectorEnv`). gymnasium's `module:EnvId` form works as in `gymnasium.make`: the module
  is imported first (it registers the id).

Actions: a Discrete space takes one integer per env; a 1-D Box space takes a float vector per
env, which `AgentEnv` clips to the space's bounds only when sending it to the env (the agent
stores the unclipped sample: its log-probability is the one the policy gave).

Autoreset: when an episode ends at step t, `Step.obs` is already the first observation of the
next episode and `Step.final_obs` holds the observation the episode ended in (equal to `obs`
where nothing ended). The loop bootstraps a truncated episode from V(final_obs) (AD-5).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from envs.torch_vector import TorchVectorEnv

__all__ = ["Step", "AgentEnv", "make_vector_env", "FLAPPY_ALIASES", "resolve_env_id", "gym_id",
           "env_spaces", "check_action_space", "SUPPORTED_ACTION_SPACES"]

FLAPPY_ALIASES = {
    "flappy": "proximal/FlappyBird-v0",
    "flappy-pixels": "proximal/FlappyBirdPixels-v0",
}


class Step(NamedTuple):
    obs: torch.Tensor  # (N, *obs_shape): next observations, already reset where an episode ended
    reward: torch.Tensor  # (N,) float32, the reward the agent learns from (clipped on Atari)
    terminated: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool
    final_obs: torch.Tensor  # (N, *obs_shape): the last observation where an episode ended, else obs
    game_over: torch.Tensor  # (N,) bool: a whole game ended (on Atari a lost life ends an episode, not a game)
    episode_return: torch.Tensor  # (N,) the game's undiscounted, unclipped return where game_over, else 0
    episode_score: torch.Tensor  # (N,) the game's score (pipes for Flappy Bird; = return elsewhere)
    episode_length: torch.Tensor  # (N,) the game's length in agent steps where game_over, else 0


def gym_id(env_id: str) -> str:
    """The registered id of `env_id`, without gymnasium's `module:` prefix."""
    return env_id.rpartition(":")[2]


def resolve_env_id(env_id: str) -> str:
    """Expand our short aliases and check the id is registered (registering ours and ALE's).

    `module:EnvId` (gymnasium's form for third-party envs) imports `module` first, as
    `gymnasium.make` does, and keeps the prefix in the returned id so a checkpoint can be
    evaluated in a fresh process. Raises ValueError naming a module that cannot be imported
    or an id that is not registered.
    """
    env_id = FLAPPY_ALIASES.get(env_id, env_id)
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"env id {env_id!r}: cannot import module {module!r} ({exc}); install the package "
                             "that registers the id, or check the name before the ':'") from None
    if name.startswith("ALE/"):
        from envs.atari import register_ale

        register_ale()
    import envs  # noqa: F401  (registers the proximal/ ids)

    if name not in gym.registry:
        stem = name.split("/")[-1].split("-")[0].lower()
        close = [k for k in gym.registry if stem and stem in k.lower()][:5]
        hint = f"; similar registered ids: {close}" if close else ""
        where = f" (module {module!r} was imported but did not register it)" if module else ""
        raise ValueError(
            f"unknown env id {name!r}{where}{hint}. Ours: {sorted(FLAPPY_ALIASES)} or "
            f"{sorted(FLAPPY_ALIASES.values())}; any gymnasium id such as CartPole-v1, Pendulum-v1, HalfCheetah-v5 "
            "or ALE/Pong-v5; a third-party id as 'module:EnvId' (the module registers it)"
        )
    return env_id


SUPPORTED_ACTION_SPACES = "Discrete (a categorical policy) or a 1-D Box (a diagonal Gaussian policy)"


def check_action_space(space: gym.Space, env_id: str = "this env") -> None:
    """Raise ValueError naming `space` unless the agent has a policy for it."""
    if isinstance(space, gym.spaces.Discrete):
        return
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating):
        return
    raise ValueError(f"{env_id} has the action space {space} ({type(space).__name__}); "
                     f"the agent supports {SUPPORTED_ACTION_SPACES}")


@lru_cache(maxsize=64)
def env_spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of one env of `env_id`, checked by `check_action_space`.

    Builds and closes one env, so a bad id, a missing dependency or an unsupported space is
    reported before training starts.
    """
    env_id = resolve_env_id(env_id)
    name = gym_id(env_id)
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"cannot build {name!r}: {exc}") from None
    except ImportError as exc:  # a missing optional dependency (box2d, mujoco, ...)
        raise ValueError(f"cannot build {name!r}: {exc}; install the package it needs") from None
    spaces = env.observation_space, env.action_space
    env.close()
    check_action_space(spaces[1], name)
    return spaces


class AgentEnv:
    """A tensor vector env with SAME_STEP autoreset seen as `reset(seed) -> obs`, `step(a) -> Step`.

    Wraps `BatchedFlappyBird` or `TorchVectorEnv`; both return `info["final_obs"]` as a full
    tensor. With `env_keeps_episode_stats`, episode statistics come from `info["final_info"]`
    (Flappy Bird's score; Atari's unclipped game return from RecordEpisodeStatistics, counted
    when the last life is lost); otherwise rewards are summed here.
    """

    def __init__(self, env: gym.vector.VectorEnv, device: torch.device, env_keeps_episode_stats: bool = False):
        check_action_space(env.single_action_space)
        self.env, self.device, self.num_envs = env, device, env.num_envs
        space = env.single_action_space
        self.continuous = isinstance(space, gym.spaces.Box)
        if self.continuous:  # the bounds the sampled actions are clipped to on their way to the env
            self._low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
            self._high = torch.as_tensor(space.high, dtype=torch.float32, device=device)
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self._returns = torch.zeros(self.num_envs, device=device)
        self._lengths = torch.zeros(self.num_envs, device=device)  # agent steps since the game started
        self.env_keeps_episode_stats = env_keeps_episode_stats

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs, _ = self.env.reset(seed=seed)
        self._returns.zero_()
        self._lengths.zero_()
        return obs

    def step(self, actions: torch.Tensor) -> Step:
        if self.continuous:  # CleanRL's ClipAction: the env gets a valid action, the agent keeps its sample
            actions = torch.clamp(actions, self._low, self._high)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        reward = reward.float()
        done = terminated | truncated
        self._returns += reward
        self._lengths += 1
        final_info = info.get("final_info", {})
        if self.env_keeps_episode_stats:
            game_over = info["_final_info"]
            episode_return = final_info["episode_return"] * game_over
            episode_score = final_info.get("score", final_info["episode_return"]) * game_over
        else:
            game_over = done
            episode_return = episode_score = self._returns * done
        episode_length = self._lengths * game_over
        self._returns.masked_fill_(done, 0.0)
        self._lengths.masked_fill_(game_over, 0.0)
        return Step(obs, reward, terminated, truncated, info.get("final_obs", obs), game_over,
                    episode_return, episode_score, episode_length)

    def state_dict(self) -> dict[str, Any] | None:
        return self.env.state_dict() if hasattr(self.env, "state_dict") else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env.load_state_dict(state)

    def close(self) -> None:
        self.env.close()


def make_vector_env(env_id: str, num_envs: int, device: torch.device, *, atari_backend: str = "native",
                    **env_kwargs: Any) -> AgentEnv:
    """Build `num_envs` copies of `env_id` behind the tensor interface (see the module docstring).

    `atari_backend`: for ALE ids, "native" (ale-py's C++ vector env, the default) or
    "wrappers" (the gymnasium-wrapper stack of `envs.atari.make_atari_env`, the readable
    reference); both give (N, 4, 84, 84) uint8 frames and whole-game returns.
    `env_kwargs` go to the env: for Flappy Bird any `FlappyConfig` field (`max_score=500`,
    `pipe_gap=...`), `max_episode_steps` or `step_kernel` ("auto", "c" or "torch": see
    `envs.flappy_bird.batched`); for Atari, `make_atari_env`'s arguments.
    """
    env_id = resolve_env_id(env_id)
    name = gym_id(env_id)
    autoreset = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    if name.startswith("proximal/"):
        from envs.flappy_bird.batched import make_batched_flappy

        obs_type = "pixels" if "Pixels" in name else "features"
        # our policies always give valid actions: skip the check, which would cost a host sync per step on CUDA
        env = make_batched_flappy(num_envs, device=device, obs_type=obs_type, validate_actions=False, **env_kwargs)
        return AgentEnv(env, device, env_keeps_episode_stats=True)
    if name.startswith("ALE/"):
        from envs.atari import make_atari_vector_env, make_native_atari_vector_env

        if atari_backend not in ("native", "wrappers"):
            raise ValueError(f"atari_backend must be 'native' or 'wrappers', got {atari_backend!r}")
        make = make_native_atari_vector_env if atari_backend == "native" else make_atari_vector_env
        return AgentEnv(make(name, num_envs, device=device, **env_kwargs), device, env_keeps_episode_stats=True)
    env_spaces(env_id)  # a clear error for an unsupported action space, before N envs are built
    env = TorchVectorEnv(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                      vector_kwargs=autoreset, **env_kwargs), device)
    return AgentEnv(env, device)
