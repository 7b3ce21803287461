"""The single Flappy Bird environment (one game, plain Python numbers, gymnasium API)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .rules import (
    BIRD_H,
    BIRD_START_Y,
    BIRD_W,
    BIRD_X,
    FIRST_PIPE_X,
    FPS,
    GAP_TOP_MIN,
    GROUND_Y,
    PIPE_SPAWN_X,
    PIPE_W,
    ROT_FLAP,
    ROT_MIN,
    ROT_SPEED,
    SCORE_X,
    SCREEN_H,
    SCREEN_W,
    SECOND_PIPE_X,
    SHIFT_X,
    FlappyConfig,
    gap_offset,
    seed_key,
)

__all__ = ["FlappyBirdEnv", "check_flap_action"]


def check_flap_action(action: Any) -> bool:
    """True for a flap (1), False for doing nothing (0); anything else raises.

    Accepts Python ints and bools, NumPy integer scalars and 0-d integer arrays or tensors.
    """
    if action.__class__ is int:  # the common case, checked first because it is the fastest
        value = action
    elif isinstance(action, (bool, np.bool_, np.integer)):
        value = int(action)
    elif getattr(action, "shape", None) == () and hasattr(action, "item"):
        value = action.item()  # 0-d NumPy array or torch tensor
        if not isinstance(value, (int, bool)):
            raise TypeError(f"action must be an integer 0 or 1, got a 0-d {action.dtype} value")
        value = int(value)
    else:
        raise TypeError(
            f"action must be an integer 0 (do nothing) or 1 (flap), got {action!r} "
            f"of type {type(action).__name__}"
        )
    if value != 0 and value != 1:
        raise ValueError(f"action must be 0 (do nothing) or 1 (flap), got {value}")
    return value == 1


class FlappyBirdEnv(gym.Env[np.ndarray, int]):
    """
    ## Description

    Flappy Bird, faithful to the classic FlapPyBird game: a 288×512 screen at 30 frames per
    second, a bird at x = 57 with a 34×24 hit-box, pipes 52 px wide scrolling left at 4 px
    per frame with a 100 px gap at a random height. The bird falls under gravity (+1 px/frame²,
    at most 10 px/frame); a flap sets its vertical speed to -9 px/frame. Pass as many pipes as
    you can. One step is one frame. The constants, with their units and the names of the
    original, are in `envs/flappy_bird/rules.py`, as is the list of the rules in the order a
    step applies them:

    1. flap or fall: a flap sets the speed to `flap_speed`, else gravity adds `gravity` up to
       `max_fall_speed`; 2. rotation: 45° after a flap, then 3° less per frame down to -90°;
    3. the bird moves by its speed and stands on the ground at most; 4. the ceiling (see
    `ceiling` below); 5. pipes scroll left; 6. once the next pipe is behind the bird, pipes
    shift and a new one spawns at x = 298; 7. crash test; 8. score test; 9. reward; 10. end.

    ## Action Space

    `Discrete(2)`: 0 = do nothing, 1 = flap. An integer (Python, NumPy or a 0-d array);
    anything else raises `TypeError`, a value other than 0 or 1 raises `ValueError`.

    ## Observation Space

    With `obs_type="features"` (`proximal/FlappyBird-v0`), a float32 array of shape `(12,)`,
    every entry in [-1, 1]: each raw value is mapped linearly from its range below to [-1, 1].

    | Num | Observation                          | Raw min | Raw max | Unit    |
    |-----|--------------------------------------|---------|---------|---------|
    | 0   | last pipe: x of its left edge        | -52     | 288     | px      |
    | 1   | last pipe: top of the gap            | 0       | 404     | px      |
    | 2   | last pipe: bottom of the gap         | 0       | 404     | px      |
    | 3-5 | next pipe: the same three            |         |         |         |
    | 6-8 | next-next pipe: the same three       |         |         |         |
    | 9   | bird: top of its box                 | 0       | 380     | px      |
    | 10  | bird: vertical speed (+ = down)      | -9      | 10      | px/frame|
    | 11  | bird: rotation (+ = nose up)         | -90     | 45      | degrees |

    The "next" pipe is the first one whose right edge is not yet behind the bird; "last" is
    the one just passed. A pipe with no pixel on screen (not yet scrolled in, or gone past the
    left edge, or none yet at the start) is reported at the edge it lies beyond (x = 288 or
    x = -52) with a fully open gap (top 0, bottom 404): the features show what the screen shows.

    With `obs_type="pixels"` (`proximal/FlappyBirdPixels-v0`), the rendered frame (without the
    score digits), a uint8 array `(512, 288, 3)`. The standard preprocessing comes from
    gymnasium's own wrappers (`GrayscaleObservation`, `ResizeObservation((84, 84))`,
    `FrameStackObservation(4)`); `envs.flappy_bird.make_flappy_pixels` applies them.

    ## Rewards

    | Frame outcome           | Reward                          | Default |
    |-------------------------|---------------------------------|---------|
    | survived                | `reward_alive`                  | +0.1    |
    | survived, passed a pipe | `reward_alive + reward_pipe`    | +1.1    |
    | crashed                 | `reward_crash`                  | -1.0    |

    Rewards are rounded to float32 once (so the batched env returns the very same values).
    `info["score"]` is the number of pipes passed in the episode.

    ## Starting State

    The bird at y = 244 with speed -9 (as if it had just flapped) and rotation 45°; the first
    two pipes off screen at x = 488 and 632 with random gap tops, uniform over 80..221 px
    (FlapPyBird's `randrange(0, int(BASEY * 0.6 - gap)) + int(BASEY * 0.2)`).

    Randomness: the gap heights of an env form a stream drawn by a counter-based hash of
    (seed, pipe number). `reset(seed=s)` starts the stream of seed `s`; `reset()` continues it,
    so `reset(seed=s)` followed by several `reset()` always plays the same episodes. Env i of
    the batched env seeded with `s` plays exactly the episodes of this env seeded with `s + i`.

    ## Episode End

    1. Termination: the bird touches the ground (the bottom of its box reaches y = 404) or its
       box overlaps a pipe (rectangles, like FlapPyBird's first collision test), or, with
       `ceiling="crash"`, it touches the top of the screen.
    2. Truncation: `max_score` pipes passed (if set), or the step limit of the registration
       (`max_episode_steps`, 20,000 frames by default; gymnasium's `TimeLimit` applies it).

    Calling `step` after termination or a score-cap truncation, before `reset`, raises
    `RuntimeError`.

    ## Arguments

    ```python
    import gymnasium as gym
    import envs  # registers the proximal/ ids
    env = gym.make("proximal/FlappyBird-v0", render_mode="rgb_array", pipe_gap=120)
    ```

    | Parameter        | Type         | Default      | Description                                |
    |------------------|--------------|--------------|--------------------------------------------|
    | `render_mode`    | str \\| None | `None`       | "human" (window at 30 fps) or "rgb_array"  |
    | `obs_type`       | str          | `"features"` | "features" or "pixels"                     |
    | `config`         | FlappyConfig | defaults     | all game settings at once                  |
    | `**config`       |              |              | any `FlappyConfig` field: `pipe_gap`,      |
    |                  |              |              | `pipe_speed`, `gravity`, `flap_speed`,     |
    |                  |              |              | `max_fall_speed`, `ceiling` ("clamp" or    |
    |                  |              |              | "crash"), `reward_alive`, `reward_pipe`,   |
    |                  |              |              | `reward_crash`, `max_score`,               |
    |                  |              |              | `gap_table_size`                           |

    An invalid setting raises `ValueError` naming the field. `ceiling="clamp"` (default): the
    bird stops at the top with its upward speed zeroed, so it falls on the next frame without
    a flap and can never get stuck; pipes reach above the screen, so this is no way past a
    pipe. `ceiling="crash"`: touching the top ends the episode.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        render_mode: str | None = None,
        obs_type: str = "features",
        config: FlappyConfig | None = None,
        **config_fields: Any,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        if obs_type not in ("features", "pixels"):
            raise ValueError(f"obs_type must be 'features' or 'pixels', got {obs_type!r}")
        if config is None:
            config = FlappyConfig(**config_fields)
        elif config_fields:
            config = config.replace(**config_fields)
        self.config = config
        self.render_mode = render_mode
        self.obs_type = obs_type

        self.action_space = spaces.Discrete(2)
        if obs_type == "features":
            self.observation_space = spaces.Box(-1.0, 1.0, shape=(12,), dtype=np.float32)
        else:
            self.observation_space = spaces.Box(0, 255, (SCREEN_H, SCREEN_W, 3), np.uint8)

        # Normalisation of the features: (raw - mid) * scale, in float32 (see rules.py).
        self._mid = config.feature_mid
        self._scale = config.feature_scale
        self._rewards = config.rewards
        self._renderer = None  # created on the first frame drawn (this imports pygame)

        # Gap-height stream: key from the seed, and the number of heights drawn so far.
        self._key: int | None = None
        self._draws = 0
        # Game state, set by reset(): three pipes [x, gap_top, gap_bottom] (last, next,
        # next-next), the bird's y (px), speed (px/frame) and rotation (degrees).
        self._pipes: list[list[int]] = []
        self._y: int | None = None
        self._v = 0
        self._rot = 0
        self._score = 0
        self._frame = 0
        self._ended = False

    # ---- gymnasium API -----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._key, self._draws = seed_key(seed), 0
        elif self._key is None:  # first reset without a seed: a random stream
            self._key, self._draws = seed_key(int(self.np_random.integers(2**63))), 0
        gap = self.config.pipe_gap
        top0 = self._next_gap_top()
        top1 = self._next_gap_top()
        self._pipes = [
            [-PIPE_W, 0, GROUND_Y],  # no pipe behind the bird yet: one already off screen
            [FIRST_PIPE_X, top0, top0 + gap],
            [SECOND_PIPE_X, top1, top1 + gap],
        ]
        self._y = BIRD_START_Y
        self._v = self.config.flap_speed  # the original starts as if the bird had just flapped
        self._rot = ROT_FLAP
        self._score = 0
        self._frame = 0
        self._ended = False
        if self.render_mode == "human":
            self.render()
        return self._observe(), {"score": 0}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._y is None:
            raise RuntimeError("call reset() before step()")
        if self._ended:
            raise RuntimeError(
                "step() called after the episode ended (terminated or truncated); "
                "call reset() to start a new episode"
            )
        flap = check_flap_action(action)
        cfg = self.config

        # 1-2. Flap or fall, and the rotation (a flap skips gravity for that frame).
        if flap:
            self._v = cfg.flap_speed
            self._rot = ROT_FLAP
        else:
            self._v = min(self._v + cfg.gravity, cfg.max_fall_speed)
            self._rot = max(self._rot - ROT_SPEED, ROT_MIN)
        # 3. Move; the bird cannot sink into the ground.
        y = min(self._y + self._v, GROUND_Y - BIRD_H)
        # 4. Ceiling: the bird never leaves the screen upwards.
        hit_ceiling = y < 0
        if hit_ceiling:
            y = 0
            if cfg.ceiling == "clamp":
                self._v = 0  # upward motion stops; the next frame without a flap falls
        self._y = y
        # 5. Scroll the pipes.
        for pipe in self._pipes:
            pipe[0] -= cfg.pipe_speed
        # 6. Once the next pipe is behind the bird: shift, and spawn a new pipe on the right.
        if self._pipes[1][0] < SHIFT_X:
            top = self._next_gap_top()
            self._pipes = [self._pipes[1], self._pipes[2], [PIPE_SPAWN_X, top, top + cfg.pipe_gap]]
        # 7. Crash: ground, ceiling (crash rule), or the bird's box overlapping the next pipe
        # (the last pipe is behind the bird and the next-next one is a spacing further away).
        x, top, bottom = self._pipes[1]
        crash = (
            y >= GROUND_Y - BIRD_H
            or (hit_ceiling and cfg.ceiling == "crash")
            or (BIRD_X - PIPE_W < x < BIRD_X + BIRD_W and (y < top or y + BIRD_H > bottom))
        )
        # 8. Score: the next pipe's centre crosses the bird's centre on this frame.
        passed = not crash and SCORE_X - cfg.pipe_speed < x <= SCORE_X
        if passed:
            self._score += 1
        self._frame += 1
        # 9-10. Reward and episode end.
        alive, alive_and_pipe, crashed = self._rewards
        reward = crashed if crash else (alive_and_pipe if passed else alive)
        terminated = crash
        truncated = cfg.max_score is not None and self._score >= cfg.max_score
        self._ended = terminated or truncated
        if self.render_mode == "human":
            self.render()
        return self._observe(), reward, terminated, truncated, {"score": self._score}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn(
                "You are calling render() without a render mode; pass render_mode='rgb_array' "
                "or 'human' when making the environment."
            )
            return None
        if self._y is None:
            raise RuntimeError("call reset() before render()")
        if self.render_mode == "human":
            self._get_renderer().show(self._render_state())
            return None
        return self._get_renderer().rgb_array(self._render_state())

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- helpers -----------------------------------------------------------------------------
    def _next_gap_top(self) -> int:
        top = GAP_TOP_MIN + gap_offset(self._key, self._draws, self.config)
        self._draws += 1
        return top

    def _observe(self) -> np.ndarray:
        if self.obs_type == "pixels":
            return self._get_renderer().rgb_array(self._render_state(), show_score=False)
        values = []
        for x, top, bottom in self._pipes:
            if x >= SCREEN_W:  # not scrolled in yet
                values += (SCREEN_W, 0, GROUND_Y)
            elif x <= -PIPE_W:  # gone past the left edge
                values += (-PIPE_W, 0, GROUND_Y)
            else:
                values += (x, top, bottom)
        values += (self._y, self._v, self._rot)
        obs = np.array(values, dtype=np.float32)
        obs -= self._mid  # exact: whole or half numbers
        obs *= self._scale  # one float32 rounding, the same as the batched env's
        return obs

    def _render_state(self):
        from .render import RenderState

        pipes = [tuple(p) for p in self._pipes]
        scroll = self._frame * self.config.pipe_speed
        return RenderState(pipes, self._y, self._rot, self._frame, self._score, scroll)

    def _get_renderer(self):
        if self._renderer is None:
            from .render import Renderer

            self._renderer = Renderer(human=self.render_mode == "human")
        return self._renderer
