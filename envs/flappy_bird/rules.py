"""The rules of Flappy Bird, shared by the single env and the batched env.

Everything both environments must agree on lives here, once:

- the constants of the classic FlapPyBird game (screen, bird, pipes), each with its unit;
- `FlappyConfig`, the knobs a user may change (gap, speeds, rewards, ceiling rule), validated
  at construction so a bad value fails with a `ValueError` that names the field;
- the generator of random gap heights, a counter-based hash that plain Python and torch
  compute identically (this is what lets env i of the batched env replay the single env);
- the layout of the 12-number feature observation and its normalisation.

Units: positions in pixels (px) with y growing downwards as on screen, speeds in px/frame,
accelerations in px/frame², angles in degrees, time in frames (the game runs at 30 fps).
Every physical quantity is a whole number, as in the original game, so the batched env can
hold its state in float32 without any rounding: both envs compute exactly the same numbers.

How each rule is written in the two envs (the docstrings of `env.py` and `batched.py` follow
this list in order):

1. flap or fall      `v = flap_speed` if flapping, else `v = min(v + gravity, max_fall_speed)`
2. rotation          `rot = 45` if flapping, else `rot = max(rot - 3, -90)` (visual, 12th feature)
3. move              `y = min(y + v, GROUND_Y - BIRD_H)` (the bird stands on the ground)
4. ceiling           `y < 0` → "clamp": `y = 0, v = 0`; "crash": `y = 0` and the episode ends
5. scroll            every pipe moves `pipe_speed` px to the left
6. next pipe passed  when the next pipe's right edge is left of the bird (`x < SHIFT_X`), the
                     pipes shift (next → last, next-next → next) and a new pipe spawns at
                     `PIPE_SPAWN_X` with a fresh random gap (FlapPyBird's "first pipe x < 5")
7. crash             bird on the ground, or the bird's 34×24 box overlaps the next pipe
8. score             the next pipe's centre crosses the bird's centre this frame (no crash)
9. reward            `reward_crash` on a crash, else `reward_alive` (+ `reward_pipe` on a score)
10. episode end      crash → terminated; score cap or step limit → truncated

Faithfulness to FlapPyBird (its `mainGame` loop), and the few places where this differs:

- The original tests crash and score at the top of a frame and then moves; a step here takes
  the action, moves, then tests. The sequence of events is the same; only the step boundary
  sits after the action, so a step's reward and termination belong to the action just taken.
- Pipes: the original keeps a list of 2 or 3 pipes, spawns one at x = 298 when the first
  reaches `0 < x < 5` and drops the first once `x < -52`. Here there are always 3 slots (last,
  next, next-next): the same pipes, the "last" slot holding the passed pipe, which shows
  nothing once the original would have dropped it. Spacing is therefore the original's too
  (144 to 152 px, depending on how the pipe positions fall on multiples of 4).
- Gravity: the original adds 1 while the speed is below 10; `min(v + g, max)` is the same
  with its whole-number constants. The ground test `y + 24 >= 404` is the original's
  `y + h >= BASEY - 1` with `BASEY = 404.48`, for whole y.
- Collisions use the hit-boxes only (the original refines box overlaps with per-pixel masks
  of its sprites, which are not part of this project).
- The ceiling: the original lets the bird rise up to ~90 px above the screen; here it cannot
  leave the screen (see `FlappyConfig.ceiling`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "FPS",
    "SCREEN_W",
    "SCREEN_H",
    "GROUND_Y",
    "BIRD_X",
    "BIRD_W",
    "BIRD_H",
    "BIRD_START_Y",
    "PIPE_W",
    "PIPE_H",
    "PIPE_SPAWN_X",
    "FIRST_PIPE_X",
    "SECOND_PIPE_X",
    "SHIFT_X",
    "SCORE_X",
    "GAP_TOP_MIN",
    "ROT_FLAP",
    "ROT_SPEED",
    "ROT_MIN",
    "ROT_VISIBLE_MAX",
    "MAX_EPISODE_STEPS",
    "FEATURE_NAMES",
    "FlappyConfig",
    "hash32",
    "seed_key",
    "gap_offset",
]

# ---------------------------------------------------------------------------------------------
# Constants of the classic game (FlapPyBird). Names of the original in brackets.
# ---------------------------------------------------------------------------------------------
FPS = 30  # frames per second of the original game loop [FPS]
SCREEN_W = 288  # px, screen width [SCREENWIDTH]
SCREEN_H = 512  # px, screen height [SCREENHEIGHT]
GROUND_Y = 404  # px, top of the ground: int(512 * 0.79), where the base image is drawn [BASEY]

BIRD_X = 57  # px, left edge of the bird, fixed: int(SCREEN_W * 0.2) [playerx]
BIRD_W = 34  # px, hit-box width (the bird sprite's width)
BIRD_H = 24  # px, hit-box height (the bird sprite's height)
BIRD_START_Y = 244  # px, top of the bird at the start: int((SCREEN_H - BIRD_H) / 2) [playery]

PIPE_W = 52  # px, pipe width (the pipe sprite's width)
PIPE_H = 320  # px, pipe sprite height; pipes reach past the screen's top and the ground
PIPE_SPAWN_X = SCREEN_W + 10  # px, x of a newly spawned pipe (298) [getRandomPipe]
FIRST_PIPE_X = SCREEN_W + 200  # px, first pipe at the start (488)
SECOND_PIPE_X = SCREEN_W + 200 + SCREEN_W // 2  # px, second pipe at the start (632)
# A pipe is "passed" once its right edge is left of the bird's left edge: x + PIPE_W < BIRD_X,
# i.e. x < 5. This is exactly FlapPyBird's spawn test `0 < upperPipes[0]['x'] < 5`, which
# with pipes moving 4 px/frame fires on the first frame where the first pipe's x < 5.
SHIFT_X = BIRD_X - PIPE_W  # px (5)
# FlapPyBird scores a pipe on the frame where `pipeMid <= playerMid < pipeMid + 4` (4 = pipe
# speed): with mids x + PIPE_W/2 and BIRD_X + BIRD_W/2 that is SCORE_X - speed < x <= SCORE_X,
# exactly one frame per pipe.
SCORE_X = BIRD_X + BIRD_W // 2 - PIPE_W // 2  # px (48)

GAP_TOP_MIN = int(GROUND_Y * 0.2)  # px, highest possible gap top: int(BASEY * 0.2) = 80
_GAP_SPAN_PLUS_GAP = int(GROUND_Y * 0.6)  # px, 242: gap tops span int(BASEY * 0.6 - gap) values

ROT_FLAP = 45  # degrees, bird rotation right after a flap [playerRot after a flap]
ROT_SPEED = 3  # degrees/frame, rotation lost per frame without a flap [playerVelRot]
ROT_MIN = -90  # degrees, the bird never points further down (nose straight down)
ROT_VISIBLE_MAX = 20  # degrees, the sprite is drawn at most this tilted up [playerRotThr]

MAX_EPISODE_STEPS = 20_000  # frames (about 11 minutes of play, 540 pipes): default step limit
MAX_PIPE_SPEED = 43  # px/frame: faster pipes could skip the scoring frame (see `validate`)

# The 12 features, in order: the last, next and next-next pipes (x of the left edge, top and
# bottom of the gap), then the bird (top of its box, vertical speed, rotation).
FEATURE_NAMES = (
    "last_pipe_x",
    "last_gap_top",
    "last_gap_bottom",
    "next_pipe_x",
    "next_gap_top",
    "next_gap_bottom",
    "next_next_pipe_x",
    "next_next_gap_top",
    "next_next_gap_bottom",
    "bird_y",
    "bird_speed",
    "bird_rotation",
)

# ---------------------------------------------------------------------------------------------
# Random gap heights: a counter-based generator.
# ---------------------------------------------------------------------------------------------
# Each env owns a stream of random numbers: draw k of the stream with key K is a pure function
# of (K, k). Nothing has to be carried from one draw to the next, so the batched env can look up
# draw k of env i in a table on its device, while the single env computes the same number with
# Python integers. The hash below is a well-known 32-bit integer mixer (two rounds of
# xor-shift-multiply with 0x45D9F3B); its multiplier is below 2**31 so that products of 32-bit
# values fit in a signed 64-bit integer, which torch needs (it has no unsigned 64-bit multiply).
_MASK32 = 0xFFFF_FFFF
_HASH_MUL = 0x045D_9F3B
_WEYL = 0x61C8_8647  # 2**32 / golden ratio (mod 2**32): spreads consecutive draw indices


def hash32(x: int) -> int:
    """Mix a 32-bit integer into a pseudo-random 32-bit integer (a bijection on [0, 2**32))."""
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    return (x >> 16) ^ x


def hash32_torch(x):
    """`hash32` on an int64 tensor of values in [0, 2**32); same results, element by element."""
    x = ((x >> 16) ^ x).mul_(_HASH_MUL).bitwise_and_(_MASK32)
    x = ((x >> 16) ^ x).mul_(_HASH_MUL).bitwise_and_(_MASK32)
    return (x >> 16) ^ x


def seed_key(seed: int) -> int:
    """The 32-bit key of the gap stream of an env reset with `seed` (any int in [0, 2**64))."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return hash32(hash32(seed & _MASK32) ^ (seed >> 32))


def _draw_word(index: int) -> int:
    """The word xor-ed with the key for draw `index` (a Weyl sequence, so draws decorrelate)."""
    return (index * _WEYL) & _MASK32


def gap_offset(key: int, index: int, config: FlappyConfig) -> int:
    """Draw `index` of stream `key`: the gap's top is `GAP_TOP_MIN + gap_offset(...)` px.

    Uniform over `config.gap_top_span` values, like FlapPyBird's
    `random.randrange(0, int(BASEY * 0.6 - PIPEGAPSIZE))`. The stream repeats every
    `config.gap_table_size` draws (the batched env keeps one table of that many per env).
    """
    index &= config.gap_table_size - 1
    return hash32(key ^ _draw_word(index)) % config.gap_top_span


def gap_table(keys, config: FlappyConfig, chunk_rows: int = 4096):
    """Table `(N, gap_table_size)` uint8 of `gap_offset(keys[i], k)` for every k, with torch.

    `keys` is an int64 tensor `(N,)` on the device the table should live on. Built in chunks of
    rows so that the int64 intermediate stays small.
    """
    import torch

    size = config.gap_table_size
    words = torch.arange(size, device=keys.device, dtype=torch.int64).mul_(_WEYL)
    words.bitwise_and_(_MASK32)  # (L,)
    table = torch.empty(len(keys), size, dtype=torch.uint8, device=keys.device)  # (N, L)
    for start in range(0, len(keys), chunk_rows):
        k = keys[start : start + chunk_rows, None]  # (n, 1)
        h = hash32_torch(k ^ words[None, :])  # (n, L)
        table[start : start + chunk_rows] = h.remainder_(config.gap_top_span)
    return table


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlappyConfig:
    """What a user may change about the game; everything else is the classic game.

    Physical quantities are whole numbers (px, px/frame, px/frame²) as in the original. All
    fields are checked at construction; a bad value raises `ValueError` naming the field.
    """

    pipe_gap: int = 100
    """px, vertical opening between the upper and the lower pipe [PIPEGAPSIZE]; 1 to 241."""
    pipe_speed: int = 4
    """px/frame, how fast pipes (and the ground) move left [pipeVelX = -4]; 1 to 43."""
    gravity: int = 1
    """px/frame², added to the vertical speed on every frame without a flap [playerAccY]."""
    flap_speed: int = -9
    """px/frame, vertical speed right after a flap, negative = upwards [playerFlapAcc]."""
    max_fall_speed: int = 10
    """px/frame, the bird never falls faster than this [playerMaxVelY]."""
    ceiling: str = "clamp"
    """What the top of the screen does. "clamp": the bird stops at y = 0 and its upward speed
    is zeroed, so it falls again on the first frame without a flap (it can never stick there);
    pipes still reach above the screen, so hugging the ceiling never gets past a pipe.
    "crash": touching the top of the screen ends the episode like touching the ground.
    (The original lets the bird fly up to about 90 px above the screen; both rules keep every
    observation on screen.)"""
    reward_alive: float = 0.1
    """Reward for a frame survived."""
    reward_pipe: float = 1.0
    """Extra reward on the frame a pipe is passed (that frame gives reward_alive + reward_pipe)."""
    reward_crash: float = -1.0
    """Reward on the frame of a crash (instead of reward_alive)."""
    max_score: int | None = None
    """Truncate the episode once this many pipes are passed (None: no cap)."""
    gap_table_size: int = 1024
    """Random gap heights repeat every this many pipes of one env's stream (a power of two):
    the batched env keeps a table of this many pre-drawn heights per env on its device.
    1024 pipes are about 38,000 frames, longer than the default step limit."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def whole(name: str, low: int | None = None, high: int | None = None) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if (low is not None and value < low) or (high is not None and value > high):
                lo = "-inf" if low is None else low
                hi = "inf" if high is None else high
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")

        whole("pipe_gap", 1, _GAP_SPAN_PLUS_GAP - 1)  # at least one possible gap position
        # A pipe moving more than MAX_PIPE_SPEED px/frame could jump from in front of the
        # scoring line to behind the bird in one frame, and its pass would never be counted.
        whole("pipe_speed", 1, MAX_PIPE_SPEED)
        whole("gravity", 0, 100)
        whole("flap_speed", -100, -1)
        whole("max_fall_speed", 1, 100)
        if self.ceiling not in ("clamp", "crash"):
            raise ValueError(f"ceiling must be 'clamp' or 'crash', got {self.ceiling!r}")
        for name in ("reward_alive", "reward_pipe", "reward_crash"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.max_score is not None:
            whole("max_score", 1)
        whole("gap_table_size", 1, 2**20)
        if self.gap_table_size & (self.gap_table_size - 1):
            raise ValueError(f"gap_table_size must be a power of two, got {self.gap_table_size}")

    def replace(self, **changes) -> FlappyConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- derived values, computed once ---------------------------------------------------
    @cached_property
    def gap_top_span(self) -> int:
        """Number of possible gap tops: int(BASEY * 0.6 - pipe_gap), as in FlapPyBird."""
        return _GAP_SPAN_PLUS_GAP - self.pipe_gap

    @cached_property
    def rewards(self) -> tuple[float, float, float]:
        """(alive, alive + pipe, crash) rounded to float32, the values both envs return.

        Rounding once here makes the single env (Python floats) and the batched env (float32
        tensors) return bit-identical rewards.
        """
        f32 = np.float32
        alive = f32(self.reward_alive)
        return float(alive), float(alive + f32(self.reward_pipe)), float(f32(self.reward_crash))

    @cached_property
    def feature_low(self) -> np.ndarray:
        """Smallest value of each raw feature (px, px/frame, degrees), float32 `(12,)`."""
        pipe = [-PIPE_W, 0, 0]  # a pipe is reported at most one pipe width left of the screen
        bird = [0, self.flap_speed, ROT_MIN]
        return np.array(pipe * 3 + bird, dtype=np.float32)

    @cached_property
    def feature_high(self) -> np.ndarray:
        """Largest value of each raw feature, float32 `(12,)`."""
        pipe = [SCREEN_W, GROUND_Y, GROUND_Y]
        bird = [GROUND_Y - BIRD_H, self.max_fall_speed, ROT_FLAP]
        return np.array(pipe * 3 + bird, dtype=np.float32)

    @cached_property
    def feature_mid(self) -> np.ndarray:
        """Centre of each feature's range, float32 `(12,)` (exact: whole or half numbers)."""
        return (self.feature_low + self.feature_high) / np.float32(2)

    @cached_property
    def feature_scale(self) -> np.ndarray:
        """float32 `(12,)` so that `(raw - mid) * scale` lies in [-1, 1].

        Each factor is 1 / half-range rounded towards zero in float32, so even the extreme
        values map to at most 1 in magnitude after float32 rounding (never 1.0000001).
        """
        half = (self.feature_high.astype(np.float64) - self.feature_low) / 2
        scale = (1.0 / half).astype(np.float32)
        too_big = scale.astype(np.float64) * half > 1.0
        scale[too_big] = np.nextafter(scale[too_big], np.float32(0))
        return scale
