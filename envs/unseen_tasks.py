"""Discrete tasks that nobody tuned proximal on, reached as `envs.unseen_tasks:EnvId`.

`python -m envs.bench_suite` trains the defaults a user gets on these beside CleanRL's published
tasks, to show that the defaults hold where nobody looked. Importing this module registers:

- `FlappyBirdFeatures-v0`: flappy-bird-gymnasium's Flappy Bird (a third-party package, the
  `bench` extra) with its 12 features instead of the 180 lidar rays: float64 features in
  [−1, 1], +0.1 per frame alive, +1 per pipe, −1 at death and −0.5 per frame touching the top.
  Its episodes run long once the bird learns (no time limit of its own; we cap them at 10 000
  frames) and a frame-by-frame flapping policy hits the ceiling, so a policy's entropy can fall
  long before it has learned to pass a pipe: the task on which the earlier discrete default
  collapsed (envs/README.md, "Defaults that hold: the suite").
- `DoorKey5x5Flat-v0`: Minigrid's `MiniGrid-DoorKey-5x5-v0` (Farama's `minigrid` package, the
  `bench` extra): pick up a key, open a door, reach the goal; one sparse reward
  1 − 0.9·steps/250 at the goal. The agent sees its 7×7×3 egocentric view (object, colour and
  state codes, uint8), flattened to 147 numbers, as RL Zoo's `FlatObsWrapper` setting does
  without the mission text (the mission is the same in every episode).

Both ids are registered only when their package imports, so importing this module never fails.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym

__all__ = ["UNSEEN_TASKS", "make_doorkey_flat"]

UNSEEN_TASKS = ("envs.unseen_tasks:FlappyBirdFeatures-v0", "envs.unseen_tasks:DoorKey5x5Flat-v0")


def make_doorkey_flat(**kwargs) -> gym.Env:
    """MiniGrid-DoorKey-5x5-v0 seen through its image only, flattened to a (147,) uint8 vector."""
    import minigrid  # noqa: F401  (registers the MiniGrid ids)
    from minigrid.wrappers import ImgObsWrapper

    return gym.wrappers.FlattenObservation(ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0", **kwargs)))


def _register() -> None:
    if importlib.util.find_spec("flappy_bird_gymnasium") is not None and "FlappyBirdFeatures-v0" not in gym.registry:
        gym.register("FlappyBirdFeatures-v0", entry_point="flappy_bird_gymnasium.envs.flappy_bird_env:FlappyBirdEnv",
                     kwargs={"use_lidar": False}, max_episode_steps=10_000)
    if importlib.util.find_spec("minigrid") is not None and "DoorKey5x5Flat-v0" not in gym.registry:
        gym.register("DoorKey5x5Flat-v0", entry_point=make_doorkey_flat)


_register()
