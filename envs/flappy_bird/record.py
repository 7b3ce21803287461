"""Watching a policy: save one episode as an animated GIF, and the pixel preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from .rules import FPS

__all__ = ["record_gif", "run_episode", "make_flappy_pixels"]


def run_episode(
    env_id_or_env: str | gym.Env,
    policy_fn: Callable[[Any], Any],
    seed: int | None = None,
    render_mode: str | None = None,
    max_steps: int = 1_000_000,
    **make_kwargs: Any,
) -> float:
    """Play one episode with `policy_fn(obs) -> action`; return its score.

    The score is `info["score"]` when the env reports one (pipes for Flappy Bird), else the
    sum of the rewards. With an id, the env is made with `render_mode` (e.g. "human" to watch
    it in a window at the game's speed) and `make_kwargs` (e.g. `max_score=500`), and closed.
    """
    own_env = isinstance(env_id_or_env, str)
    if own_env:
        import envs  # noqa: F401  (registers the proximal/ ids)

    env = gym.make(env_id_or_env, render_mode=render_mode, **make_kwargs) if own_env else (
        env_id_or_env)
    try:
        obs, info = env.reset(seed=seed)
        total = 0.0
        for _ in range(max_steps):
            obs, reward, terminated, truncated, info = env.step(policy_fn(obs))
            total += float(reward)
            if terminated or truncated:
                break
    finally:
        if own_env:
            env.close()
    return float(info["score"]) if "score" in info else total


def record_gif(
    env_id_or_env: str | gym.Env,
    policy_fn: Callable[[Any], Any],
    path: str | Path,
    seed: int | None = None,
    max_frames: int = 60 * FPS,
    fps: int = FPS,
    **make_kwargs: Any,
) -> dict[str, Any]:
    """Play one episode with `policy_fn(obs) -> action` and save its frames as a GIF.

    Args:
        env_id_or_env: a registered id (made with `render_mode="rgb_array"` and
            `make_kwargs`), or an env already made with `render_mode="rgb_array"`.
        policy_fn: maps an observation to an action; it sees the env's observations (the
            features for `proximal/FlappyBird-v0`).
        path: where the GIF goes (parent folders are created).
        seed: passed to `reset`, so the same seed records the same episode.
        max_frames: stop after this many steps even if the episode goes on (60 s by default).
        fps: playback speed of the GIF.

    Returns `{"path", "frames", "return", "score"}` (score when the env reports one). Needs
    Pillow, which matplotlib already brings.
    """
    from PIL import Image

    own_env = isinstance(env_id_or_env, str)
    if own_env:
        import envs  # noqa: F401  (registers the proximal/ ids)

    env = gym.make(env_id_or_env, render_mode="rgb_array", **make_kwargs) if own_env else (
        env_id_or_env)
    if env.render_mode != "rgb_array":
        raise ValueError(f"record_gif needs an env with render_mode='rgb_array', got "
                         f"{env.render_mode!r}")
    try:
        obs, info = env.reset(seed=seed)
        frames = [env.render()]
        total = 0.0
        for _ in range(max_frames):
            obs, reward, terminated, truncated, info = env.step(policy_fn(obs))
            total += float(reward)
            frames.append(env.render())
            if terminated or truncated:
                break
    finally:
        if own_env:
            env.close()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(frame)) for frame in frames]
    # GIF delays are whole hundredths of a second: 30 fps is stored as 3/100 s per frame.
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 / fps, -1)), optimize=False)
    return {"path": str(path), "frames": len(frames), "return": total,
            "score": info.get("score")}


def make_flappy_pixels(
    frame_stack: int = 4,
    size: int = 84,
    render_mode: str | None = None,
    **kwargs: Any,
) -> gym.Env:
    """`proximal/FlappyBirdPixels-v0` with the standard preprocessing of pixel agents.

    Built from gymnasium's own wrappers: `GrayscaleObservation` (luma, `(512, 288)`),
    `ResizeObservation((size, size))`, then `FrameStackObservation(frame_stack)`; the
    observation is uint8 `(frame_stack, size, size)`, oldest frame first. `kwargs` go to
    `gymnasium.make` (for example `max_episode_steps=...` or any `FlappyConfig` field).
    `ResizeObservation` needs OpenCV (`opencv-python-headless`).
    """
    from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation

    import envs

    env = gym.make(envs.FLAPPY_PIXELS_ID, render_mode=render_mode, **kwargs)
    env = GrayscaleObservation(env)
    env = ResizeObservation(env, (size, size))
    return FrameStackObservation(env, frame_stack)
