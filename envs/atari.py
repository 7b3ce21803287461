"""Atari games with the standard preprocessing of DQN and PPO: ale-py's native vector env (the
default, fast) and the same preprocessing built from gymnasium wrappers (the readable reference).

`make_atari_env("ALE/Breakout-v5")` returns one env whose observation is uint8
`(4, 84, 84)`: the last 4 grey 84×84 frames, oldest first. The layers, innermost first:

| Stage                                   | Done by                                   |
|-----------------------------------------|-------------------------------------------|
| true game score and length per game     | `gymnasium.wrappers.RecordEpisodeStatistics` |
| no-op reset (up to 30 random NOOPs)     | `gymnasium.wrappers.AtariPreprocessing`   |
| frame skip 4, max-pool of the last two  | `AtariPreprocessing`                      |
| 84×84 grayscale                         | `AtariPreprocessing`                      |
| a lost life ends the agent's episode    | `EpisodicLifeEnv` (here: gymnasium lacks it) |
| press FIRE to start (if the game has it) | `FireResetEnv` (here: gymnasium lacks it) |
| rewards clipped to [-1, 1]              | `gymnasium.wrappers.ClipReward`           |
| 4-frame stack                           | `gymnasium.wrappers.FrameStackObservation` |

This is the preprocessing of Mnih et al. (2015) and of the PPO paper's Atari runs (as in
OpenAI Baselines and CleanRL's `ppo_atari.py`). ALE v5 ids are made with `frameskip=1` (the
skipping happens in `AtariPreprocessing`) and, by default, without sticky actions
(`repeat_action_probability=0.0`, as in those runs; pass 0.25 for the v5 default recommended
by Machado et al. 2018). `RecordEpisodeStatistics` sits innermost, so `info["episode"]`
reports whole games with unclipped scores, the number papers report.

`make_atari_vector_env(env_id, num_envs)` runs N of them in a gymnasium vector env with
SAME_STEP autoreset; with `device=...` it returns torch tensors and the same `info` layout as
`envs.flappy_bird.BatchedFlappyBird` (a full `final_obs` tensor), so one PPO loop serves both
(`envs.vector.make_vector_env` builds them this way, with `envs.torch_vector.TorchVectorEnv`).

**Native** (`make_native_atari_vector_env`, `--atari-backend native`, the trainer's default):
ale-py ≥ 0.10's `AtariVectorEnv` steps N games on C++ threads with the same preprocessing done
in C++ (no-op reset, frame skip 4 with max-pooling, 84×84 grey, FIRE reset, 4-frame stack),
several times faster than the wrappers (`python -m envs.bench_atari`). Two of the stages are
done here, the same way as in the wrapper stack, so both backends give the same signals:
its `life_loss_info` ends the agent's episode at a lost life while the game goes on (our
`EpisodicLifeEnv`, not its `episodic_life`, which restarts the whole game); rewards are
clipped here from the raw ones, which are also summed into the whole-game return (what
`RecordEpisodeStatistics` reports on the wrapper path). A game is over at a truncation, or at
a termination where the lives did not drop (a lost life lowers them; a new game resets them).

ale-py ships the ROMs; `AtariPreprocessing` needs OpenCV (`opencv-python-headless`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.wrappers import (
    AtariPreprocessing,
    ClipReward,
    FrameStackObservation,
    RecordEpisodeStatistics,
)

from envs.torch_vector import TorchVectorEnv

__all__ = [
    "EpisodicLifeEnv",
    "FireResetEnv",
    "make_atari_env",
    "make_atari_vector_env",
    "make_native_atari_vector_env",
    "NativeAtariVectorEnv",
    "register_ale",
]


def register_ale() -> None:
    """Register the ALE ids (`ALE/Pong-v5`, ...) with gymnasium; safe to call twice."""
    import ale_py

    gym.register_envs(ale_py)


class EpisodicLifeEnv(gym.Wrapper):
    """A lost life ends the agent's episode (`terminated=True`); the game goes on.

    Mnih et al. (2015): ending the episode at each lost life tells the value function that
    losing a life is bad. `reset` after a lost life only takes one NOOP step and continues the
    same game; the game itself is reset only when it is really over (or when `reset` is
    given a seed). Gymnasium's `AtariPreprocessing(terminal_on_life_loss=True)` ends the
    episode too but then resets the whole game, which is a different, harder task.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True  # a life lost, the game not over: end the agent's episode
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)  # NOOP: carry on playing
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireResetEnv(gym.Wrapper):
    """Press FIRE (then move) after every reset, for games that wait for it (Breakout)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if len(meanings) < 3 or meanings[1] != "FIRE":
            raise ValueError(f"FireResetEnv needs action 1 to be FIRE, got {meanings}")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        for action in (1, 2):  # FIRE, then a second action as Baselines does
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


def make_atari_env(
    env_id: str = "ALE/Breakout-v5",
    *,
    frame_stack: int = 4,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    episodic_life: bool = True,
    fire_reset: bool | None = None,
    clip_rewards: bool = True,
    repeat_action_probability: float = 0.0,
    render_mode: str | None = None,
    **make_kwargs: Any,
) -> gym.Env:
    """One Atari env with the standard preprocessing (see the module docstring).

    Args:
        env_id: an ALE id such as "ALE/Pong-v5" or "ALE/Breakout-v5".
        frame_stack: frames per observation (1 gives `(1, 84, 84)`).
        noop_max: at most this many NOOP actions after a reset (random start states).
        frame_skip: each action is repeated this many frames; the observation is the
            pixel-wise max of the last two (removes the flicker of some games).
        screen_size: side of the square grey observation.
        episodic_life: end the agent's episode at each lost life.
        fire_reset: press FIRE after a reset; None (default) does it when the game has FIRE.
        clip_rewards: clip rewards to [-1, 1] (their sign, for Atari's whole-number scores).
        repeat_action_probability: sticky actions (0.0: none; 0.25: ALE v5's default).
        render_mode: passed to `gymnasium.make` ("rgb_array" shows the raw game frame).
        make_kwargs: more arguments for `gymnasium.make` (e.g. `max_episode_steps`).

    Seed it with `env.reset(seed=...)`, as any gymnasium env.
    """
    register_ale()
    env = gym.make(
        env_id,
        frameskip=1,  # AtariPreprocessing does the skipping (and the max-pooling)
        repeat_action_probability=repeat_action_probability,
        render_mode=render_mode,
        **make_kwargs,
    )
    env = RecordEpisodeStatistics(env)
    env = AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=False,  # EpisodicLifeEnv does it without resetting the game
        grayscale_obs=True,
        scale_obs=False,
    )
    if episodic_life:
        env = EpisodicLifeEnv(env)
    has_fire = "FIRE" in env.unwrapped.get_action_meanings()
    if fire_reset or (fire_reset is None and has_fire):
        env = FireResetEnv(env)
    if clip_rewards:
        env = ClipReward(env, -1.0, 1.0)
    return FrameStackObservation(env, frame_stack)


def make_atari_vector_env(
    env_id: str,
    num_envs: int,
    *,
    vectorization: str = "sync",
    device: Any = None,
    vector_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> VectorEnv:
    """`num_envs` copies of `make_atari_env(env_id, **kwargs)` in one vector env.

    `vectorization`: "sync" (one process, the default: a laptop has few cores) or "async"
    (one subprocess per env). `vector_kwargs` go to the vector env's constructor; autoreset
    is SAME_STEP unless they say otherwise, like the Flappy Bird batched env. With `device`
    ("cpu", "cuda", ...), the result is an `envs.torch_vector.TorchVectorEnv`: torch tensors in and out,
    `info["final_obs"]` a full tensor. Seed with `reset(seed=s)`: env i gets `s + i`.
    """
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP, **(vector_kwargs or {})}
    fns = [partial(make_atari_env, env_id, **kwargs) for _ in range(num_envs)]
    vector_cls = SyncVectorEnv if vectorization == "sync" else AsyncVectorEnv
    venv = vector_cls(fns, **vector_kwargs)
    return venv if device is None else TorchVectorEnv(venv, device)


class NativeAtariVectorEnv:
    """ale-py's `AtariVectorEnv` seen as torch tensors, with the `info` layout of `TorchVectorEnv`.

    `step(actions (N,))` returns obs (N, 4, 84, 84) uint8, reward (N,) float32 (clipped to
    [−1, 1] with `clip_rewards`), terminated and truncated (N,) bool, and `info` with
    `final_obs` (N, 4, 84, 84) (the frames an episode ended in, else obs), `final_info`
    {"episode_return": the unclipped whole-game return} and `_final_info` (N,) bool: the games
    that ended this step. See the module docstring for lives and returns.
    """

    def __init__(self, game: str, num_envs: int, device: Any, *, episodic_life: bool = True,
                 clip_rewards: bool = True, **ale_kwargs: Any):
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(game, num_envs, autoreset_mode=AutoresetMode.SAME_STEP, episodic_life=False,
                                  life_loss_info=episodic_life, reward_clipping=False, **ale_kwargs)
        self.device, self.num_envs, self.clip_rewards = torch.device(device), num_envs, clip_rewards
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.metadata = dict(self.env.metadata)
        self._returns = np.zeros(num_envs, np.float64)  # raw reward of each game so far
        self._lives = np.zeros(num_envs, np.int64)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._returns[:] = 0.0
        self._lives[:] = info["lives"]
        return self._tensor(obs), info

    def step(self, actions):
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, dtype=np.int64))
        lives = np.asarray(info["lives"], np.int64)
        lost_life = terminated & (lives < self._lives)
        game_over = (terminated | truncated) & ~lost_life
        self._returns += reward
        episode_return = np.where(game_over, self._returns, 0.0).astype(np.float32)
        self._returns[game_over] = 0.0
        self._lives = lives
        reward = np.clip(reward, -1, 1) if self.clip_rewards else reward
        out_info = {
            "final_obs": self._tensor(info.get("final_obs", obs)),
            "final_info": {"episode_return": self._tensor(episode_return)},
            "_final_info": self._tensor(game_over),
        }
        return (self._tensor(obs), self._tensor(reward.astype(np.float32)), self._tensor(terminated),
                self._tensor(truncated), out_info)

    def close(self) -> None:
        self.env.close()


def make_native_atari_vector_env(
    env_id: str,
    num_envs: int,
    *,
    device: Any = "cpu",
    frame_stack: int = 4,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    episodic_life: bool = True,
    fire_reset: bool = True,
    clip_rewards: bool = True,
    repeat_action_probability: float = 0.0,
    num_threads: int = 0,
) -> NativeAtariVectorEnv:
    """`num_envs` games of `env_id` in ale-py's C++ vector env, preprocessed as `make_atari_env`.

    The arguments mean what they mean in `make_atari_env` (FIRE is pressed at reset only in
    games that have it); `num_threads` 0 lets ale-py pick. Seed with `reset(seed=s)`: game i
    gets s + i.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    register_ale()
    game = gym.spec(env_id).kwargs["game"]  # "ALE/MsPacman-v5" → "ms_pacman", the ROM's name
    return NativeAtariVectorEnv(game, num_envs, device, episodic_life=episodic_life, clip_rewards=clip_rewards,
                                stack_num=frame_stack, noop_max=noop_max, frameskip=frame_skip,
                                img_height=screen_size, img_width=screen_size, use_fire_reset=fire_reset,
                                repeat_action_probability=repeat_action_probability, num_threads=num_threads)
