"""Flappy Bird: the classic game as a gymnasium env, a batched tensor env, play and GIFs.

Files (read them in this order):

- `rules.py`     the game's constants (with units), `FlappyConfig`, the gap-height
                 generator and the feature layout: everything both envs share;
- `env.py`       `FlappyBirdEnv`, one game in plain Python (gymnasium `Env`);
- `batched.py`   `BatchedFlappyBird`, N games as torch tensors on any device
                 (gymnasium `VectorEnv`, SAME_STEP autoreset), and `make_batched_flappy`;
- `step.c`       the same step in C, one call for all N games: the batched env's step on
                 the CPU (`kernel.py` compiles it on first use and calls it with ctypes);
- `render.py`    the pygame renderer (sprites drawn in code) and the shared palette;
- `autopilot.py` a look-ahead scripted player over the features;
- `record.py`    `record_video`, `run_episode` and `make_flappy_pixels` (gymnasium's pixel
                 preprocessing);
- `play.py`      `python -m envs.flappy_bird.play`: play with space/up, Esc quits.

Building them:

    import gymnasium as gym
    import envs  # registers the ids
    env = gym.make("proximal/FlappyBird-v0")            # features, (12,) float32 in [-1, 1]
    env = gym.make("proximal/FlappyBirdPixels-v0")      # the frame, (512, 288, 3) uint8
    env = make_flappy_pixels()                          # (4, 84, 84) uint8, gymnasium wrappers
    venv = make_batched_flappy(1024, device="cuda", seed=0)  # N games as tensors
    obs, info = venv.reset()
    obs, reward, terminated, truncated, info = venv.step(actions)  # torch tensors on the device
    bootstrap_obs = info["final_obs"]                   # last obs of ended episodes
    venv = gym.make_vec("proximal/FlappyBird-v0", num_envs=1024, device="cuda",
                        vectorization_mode="vector_entry_point")  # the same batched env

Any `FlappyConfig` field can be passed as a keyword to all of them (`pipe_gap=120`,
`ceiling="crash"`, ...); an invalid value raises `ValueError` naming the field.
"""

from .autopilot import autopilot, decode_features
from .batched import BatchedFlappyBird, make_batched_flappy
from .env import FlappyBirdEnv
from .record import make_flappy_pixels, record_video, run_episode
from .rules import FEATURE_NAMES, MAX_EPISODE_STEPS, FlappyConfig

__all__ = [
    "FEATURE_NAMES",
    "MAX_EPISODE_STEPS",
    "BatchedFlappyBird",
    "FlappyBirdEnv",
    "FlappyConfig",
    "autopilot",
    "decode_features",
    "make_batched_flappy",
    "make_flappy_pixels",
    "record_video",
    "run_episode",
]
