"""Watching a policy: stream one episode to a GIF or MP4, and the pixel preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from .rules import FPS

__all__ = ["VideoWriter", "record_video", "run_episode", "make_flappy_pixels"]


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


class VideoWriter:
    """Write frames to a GIF or an MP4 one at a time, never holding the episode in memory.

    The format follows the file's suffix. GIF: each frame is quantised to the palette of the
    first frame (the game's colours do not change) and its bytes are appended at once, with
    Pillow's frame-level GIF encoder (`getheader`/`getdata`). MP4: raw RGB frames are piped to
    the ffmpeg binary that `imageio-ffmpeg` ships (H.264, yuv420p, playable in browsers).
    Use as a context manager; `append(frame)` takes an (H, W, 3) uint8 array. `shrink = k` keeps
    one pixel in k along each side (the mean of each k × k block): a README-sized GIF at k = 2.
    """

    SUFFIXES = (".gif", ".mp4")

    def __init__(self, path: str | Path, fps: int = FPS, shrink: int = 1):
        if shrink < 1:
            raise ValueError(f"shrink must be ≥ 1, got {shrink}")
        self.path = Path(path)
        if self.path.suffix.lower() not in self.SUFFIXES:
            raise ValueError(f"video: the file must end in {' or '.join(self.SUFFIXES)}, got {str(path)!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.shrink, self.frames = fps, shrink, 0
        self._file = None
        self._palette = None
        self._ffmpeg = None

    def append(self, frame: Any) -> None:
        frame = np.asarray(frame, dtype=np.uint8)  # (H, W, 3)
        if self.shrink > 1:
            from PIL import Image

            frame = np.asarray(Image.fromarray(frame).reduce(self.shrink))
        frame = np.ascontiguousarray(frame)
        if self.path.suffix.lower() == ".gif":
            self._append_gif(frame)
        else:
            self._append_mp4(frame)
        self.frames += 1

    def _append_gif(self, frame: np.ndarray) -> None:
        from PIL import GifImagePlugin, Image

        image = Image.fromarray(frame)
        # GIF delays are whole hundredths of a second: 30 fps is stored as 3/100 s per frame.
        duration = max(20, round(1000 / self.fps, -1))
        if self._palette is None:
            self._palette = image.quantize(colors=256)
            self._file = open(self.path, "wb")
            for chunk in GifImagePlugin.getheader(self._palette, info={"loop": 0})[0]:
                self._file.write(chunk)
        indexed = image.quantize(palette=self._palette, dither=Image.Dither.NONE)  # flat colours compress
        for chunk in GifImagePlugin.getdata(indexed, duration=duration):
            self._file.write(chunk)
        self._file.flush()  # on disk now: an interrupted recording keeps every frame drawn so far

    def _append_mp4(self, frame: np.ndarray) -> None:
        if self._ffmpeg is None:
            import imageio_ffmpeg

            height, width = frame.shape[:2]
            # H.264 with yuv420p needs even sides: ffmpeg pads by one pixel where needed.
            self._ffmpeg = imageio_ffmpeg.write_frames(
                str(self.path), (width, height), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
                macro_block_size=1, output_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
            )
            self._ffmpeg.send(None)  # start the generator
        self._ffmpeg.send(frame)

    def close(self) -> None:
        if self._file is not None:
            self._file.write(b";")  # the GIF trailer
            self._file.close()
            self._file = None
        if self._ffmpeg is not None:
            self._ffmpeg.close()
            self._ffmpeg = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_video(
    env_id_or_env: str | gym.Env,
    policy_fn: Callable[[Any], Any],
    path: str | Path,
    seed: int | None = None,
    max_frames: int = 60 * FPS,
    fps: int = FPS,
    shrink: int = 1,
    **make_kwargs: Any,
) -> dict[str, Any]:
    """Play one episode with `policy_fn(obs) -> action` and stream its frames to a GIF or MP4.

    Args:
        env_id_or_env: a registered id (made with `render_mode="rgb_array"` and
            `make_kwargs`), or an env already made with `render_mode="rgb_array"`.
        policy_fn: maps an observation to an action; it sees the env's observations (the
            features for `proximal/FlappyBird-v0`).
        path: where the video goes, `.gif` or `.mp4` (parent folders are created).
        seed: passed to `reset`, so the same seed records the same episode.
        max_frames: stop after this many steps even if the episode goes on (60 s by default).
        fps: playback speed.
        shrink: keep one pixel in `shrink` along each side (2 halves the width and height).

    Each frame goes to the file as soon as it is drawn (`VideoWriter`), so memory stays flat
    however long the episode. Returns `{"path", "frames", "return", "score"}` (score when the
    env reports one).
    """
    own_env = isinstance(env_id_or_env, str)
    if own_env:
        import envs  # noqa: F401  (registers the proximal/ ids)

    env = gym.make(env_id_or_env, render_mode="rgb_array", **make_kwargs) if own_env else (
        env_id_or_env)
    if env.render_mode != "rgb_array":
        raise ValueError(f"record_video needs an env with render_mode='rgb_array', got "
                         f"{env.render_mode!r}")
    try:
        with VideoWriter(path, fps=fps, shrink=shrink) as video:
            obs, info = env.reset(seed=seed)
            video.append(env.render())
            total = 0.0
            for _ in range(max_frames):
                obs, reward, terminated, truncated, info = env.step(policy_fn(obs))
                total += float(reward)
                video.append(env.render())
                if terminated or truncated:
                    break
    finally:
        if own_env:
            env.close()
    return {"path": str(path), "frames": video.frames, "return": total, "score": info.get("score")}


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
