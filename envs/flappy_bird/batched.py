"""N Flappy Bird games stepped at once as torch tensors, on the CPU or a GPU.

`BatchedFlappyBird` is a `gymnasium.vector.VectorEnv` whose `step` takes and returns torch
tensors on its device, so a PPO loop on CUDA never copies anything back to the host. It plays
exactly the game of `FlappyBirdEnv` (the same rules from `rules.py`, in the same order): with
the same seeds and actions, env i returns the same features, rewards, terminations and
truncations as a single env reset with `seed + i`, bit for bit (`tests/test_flappy_batched.py`).

The whole state lives in one preallocated float32 tensor of shape (15, N), one row per
quantity (the 12 raw features, then score, episode length and return), updated in place. How
the rules of `rules.py` are written here (numbers as in its list):

1-2. `[speed, rotation] += [gravity, -3]`, clamped to `[≤ max_fall_speed, ≥ -90]`, then
     replaced by `[flap_speed, 45]` where the action is a flap (ops on the `(2, N)` rows).
3-4. `y += speed`, clamped to `[0, GROUND_Y - BIRD_H]`; where `y` went below 0 the speed is
     zeroed ("clamp") or the env crashes ("crash").
5.   the x of all three pipes `-= pipe_speed` (one op on the `(3, N)` rows of pipe x).
6.   where the next pipe is behind the bird, the 9 pipe rows are replaced by the shifted
     ones plus a new pipe whose gap top comes from the env's table of pre-drawn heights.
7-8. crash and score: four interval tests `|v - centre| ≤ half` at once on a `(2, 2, N)`
     block (the next pipe's x within the bird's columns and within the score window, the
     bird's y within the gap and on the ground), combined by arithmetic on 0/1 values.
9-10. reward and end: a selection between the three float32 rewards, and comparisons of the
     score and the episode length with their caps.

No Python loop runs over envs and nothing is copied to the host (except the optional check of
action values). All state values are whole numbers, which float32 holds exactly, so the
arithmetic is exact and matches the single env's Python integers.

Two implementations of the step (`step_kernel`):

- the torch ops described above and below: the readable reference, and the step on a GPU and
  for pixel observations;
- on the CPU, with feature observations, a C kernel (`step.c`, compiled on first use and called
  through ctypes by `kernel.py`): one call steps all envs, the rules in the same order,
  reading and writing the same state tensors in place. Its arithmetic is exact where the
  torch step's is (whole numbers), and its two roundings, the episode return and the
  features' `(raw - mid) * scale`, are the same float32 operations in the same order. A torch
  op costs about a microsecond to launch whatever its size, so fifty of them bound the torch
  step on a CPU; the kernel's one call is 2.5 to 8 times faster, depending on N and on the
  machine's load (`python -m envs.bench` times both).

`tests/test_flappy_kernel.py` proves the two identical, bit for bit: every output and the
whole state after every step, over thousands of steps of random play. The state layout is the
same for both, so `state_dict()` and `load_state_dict()` move a game between them.
`step_kernel="auto"` (the default) takes the C kernel where it applies and compiles, else the
torch ops (with one warning per process when a compiler is missing or fails); "c" insists on
the kernel (an error where it cannot run); "torch" always takes the torch ops.

Speed of the torch step. A step is about fifty torch ops, each over whole rows. With a
thousand envs on a CPU an op costs about as much to launch as to run, so the step uses as few
ops as it can: constants are tensors made once (a Python number would be converted on every
call), results go into preallocated tensors, and conditions are float32 0/1 weights (a `lerp`
by such a weight is an exact selection). With thousands of envs on a CPU, the end of a step
(autoreset and the lookup of the next random heights) works only on the few envs whose
episode ended or whose pipes shifted.

Autoreset (`metadata["autoreset_mode"] == AutoresetMode.SAME_STEP`): an env whose episode
ends in a step is reset within that same step. The returned observation of that env is the
first observation of its new episode, and the last observation of the finished episode is in
`info["final_obs"]` for bootstrapping (`V(final_obs)` is the value to use at a truncation).
`info["final_obs"]` is a full `(N, ...)` tensor: for envs that did not end it equals the
returned observation, so `torch.where(truncated, V(final_obs), 0)` needs no indexing.
`info["_final_obs"]` (= `terminated | truncated`) says which rows are final observations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from core.device import resolve_device

from .kernel import KernelUnavailable, StepKernel, warn_unavailable
from .raster import PIXELS, Rasteriser
from .rules import (
    BIRD_H,
    BIRD_START_Y,
    BIRD_W,
    BIRD_X,
    FIRST_PIPE_X,
    FPS,
    GAP_TOP_MIN,
    GROUND_Y,
    MAX_EPISODE_STEPS,
    PIPE_SPAWN_X,
    PIPE_W,
    ROT_FLAP,
    ROT_MIN,
    ROT_SPEED,
    SCORE_X,
    SCREEN_W,
    SECOND_PIPE_X,
    SHIFT_X,
    FlappyConfig,
    gap_table,
    seed_key,
)

__all__ = ["BatchedFlappyBird", "make_batched_flappy", "PIXELS", "STEP_KERNELS"]

STEP_KERNELS = ("auto", "c", "torch")  # the values of `step_kernel` (see the module doc)

# Rows of the state tensor (15, N), float32. 0-11 are the raw features, in the order of
# rules.FEATURE_NAMES; 12-14 are episode statistics.
_NEXT_X, _NEXT_TOP, _NEXT_BOTTOM = 3, 4, 5
_Y, _SPEED, _ROT = 9, 10, 11
_SCORE, _LENGTH, _RETURN = 12, 13, 14
_STATE_ROWS = 15
_SPARSE_MIN_ENVS = 4096  # see `_sparse`: below this, working on all envs is faster (measured)


class _FeatureWork(NamedTuple):
    """Scratch tensors (and views of them) of `_features_of` for n envs."""

    centred: torch.Tensor  # (12, n) raw - mid
    pipe_x: torch.Tensor  # (3, n) view: the pipes' x rows
    pipe_gaps: torch.Tensor  # (3, 2, n) view: the pipes' gap top and bottom rows
    abs_x: torch.Tensor  # (3, n)
    hidden: torch.Tensor  # (3, n) 1.0 where the pipe is off screen
    hidden_per_pipe: torch.Tensor  # (3, 1, n) view
    by_env: torch.Tensor  # (n, 12) view: centred.T


class BatchedFlappyBird(VectorEnv):
    """`num_envs` Flappy Bird games as tensors on `device`, with SAME_STEP autoreset.

    Args:
        num_envs: number of games N.
        device: "cpu", "cuda", "cuda:1", "auto" or a `torch.device`.
        obs_type: "features" → float32 `(N, 12)` in [-1, 1] (see `FlappyBirdEnv`);
            "pixels" → uint8 `(N, frame_stack, 84, 84)`, the scene rasterised on the device (`raster.py`)
            as flat grey rectangles (sky, pipes, ground, the bird's box), the last
            `frame_stack` frames stacked, oldest first.
        max_episode_steps: truncate an episode after this many frames (None: never).
        frame_stack: frames per pixel observation.
        validate_actions: check that integer actions are 0 or 1. This costs one host sync per
            step on CUDA; bool actions are never checked (they cannot be out of range).
        seed: the seed of the first `reset()` that is given none (as if passed to it).
        render_mode: only None (a batched env does not render; use `FlappyBirdEnv`).
        config / **config_fields: the game settings, as for `FlappyBirdEnv`.
        step_kernel: "auto" (the C kernel on the CPU with features when it compiles, else the
            torch ops), "c" (the C kernel, or an error) or "torch" (see the module doc). The
            attribute `step_kernel` then says which one steps: "c" or "torch".

    `step(actions)` takes a `(N,)` tensor of 0/1 (any integer dtype) or bool on the env's
    device (NumPy arrays, lists and tensors on another device are moved there) and returns
    `(obs, reward, terminated, truncated, info)`: obs as above, reward float32 `(N,)`,
    terminated and truncated bool `(N,)`, all on the device and new tensors each step (safe to
    keep). `info` holds tensors on the device:

    - "score": float32 `(N,)`, pipes passed in the current episode (0 right after a reset);
    - "final_obs": the observation at the end of this step, before autoreset (see module doc);
    - "_final_obs", "_final_info": bool `(N,)`, the envs whose episode ended this step;
    - "final_info": {"score", "episode_return", "episode_length"}, float32 `(N,)` each, the
      finished episode's totals (meaningful where `_final_info` is True).

    The spaces describe shapes and dtypes as gymnasium expects; the values are torch tensors.
    """

    metadata = {"render_modes": [], "render_fps": FPS, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        obs_type: str = "features",
        max_episode_steps: int | None = MAX_EPISODE_STEPS,
        frame_stack: int = 4,
        validate_actions: bool = True,
        seed: int | Sequence[int] | None = None,
        render_mode: str | None = None,
        config: FlappyConfig | None = None,
        step_kernel: str = "auto",
        **config_fields: Any,
    ):
        if step_kernel not in STEP_KERNELS:
            raise ValueError(f"step_kernel must be one of {', '.join(map(repr, STEP_KERNELS))}, "
                             f"got {step_kernel!r}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if obs_type not in ("features", "pixels"):
            raise ValueError(f"obs_type must be 'features' or 'pixels', got {obs_type!r}")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, int) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be a positive int or None, got "
                             f"{max_episode_steps!r}")
        if not isinstance(frame_stack, int) or frame_stack < 1:
            raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
        if render_mode is not None:
            raise ValueError("the batched env does not render; use FlappyBirdEnv to watch a game")
        if config is None:
            config = FlappyConfig(**config_fields)
        elif config_fields:
            config = config.replace(**config_fields)
        self.config = config
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.obs_type = obs_type
        self.max_episode_steps = max_episode_steps
        self.frame_stack = frame_stack
        self.validate_actions = validate_actions
        self.render_mode = None
        self._constructor_seed = seed

        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, num_envs)
        if obs_type == "features":
            self.single_observation_space = spaces.Box(-1.0, 1.0, (12,), np.float32)
        else:
            self.single_observation_space = spaces.Box(
                0, 255, (frame_stack, PIXELS, PIXELS), np.uint8
            )
        self.observation_space = batch_space(self.single_observation_space, num_envs)

        n, dev, f32 = num_envs, self.device, torch.float32
        gap = config.pipe_gap
        # ---- the state: one float32 tensor, one row per quantity, one column per env -------
        # Row-per-quantity ("structure of arrays") makes every per-quantity operation below
        # run over contiguous memory, which is what makes wide batches fast on a CPU.
        self._state = torch.zeros(_STATE_ROWS, n, dtype=f32, device=dev)  # (15, N)
        s = self._state
        self._pipes = s[0:9]  # (9, N) last, next, next-next pipe: x, gap top, gap bottom
        self._pipes_after_shift = s[3:9]  # (6, N) next and next-next
        self._pipe_x = s[0:9:3]  # (3, N)
        self._next_x, self._next_top = s[_NEXT_X], s[_NEXT_TOP]
        self._y, self._speed = s[_Y], s[_SPEED]
        self._speed_rot = s[_SPEED : _ROT + 1]  # (2, N)
        self._features_raw = s[0:12]  # (12, N)
        self._stats = s[_SCORE : _RETURN + 1]  # (3, N) score, length, return
        self._score, self._length = s[_SCORE], s[_LENGTH]
        self._score_length = s[_SCORE : _LENGTH + 1]  # (2, N)

        # ---- constants of the step, as tensors on the device ------------------------------
        # A Python number given to a torch op is turned into a tensor on every call (about a
        # microsecond each, as much as the op itself on 1,024 envs), so every number the step
        # uses is made a tensor once, here: 0-d for one value, (k, 1) for one per row.
        def scalar(value, dtype=f32):  # 0-d
            return torch.tensor(value, dtype=dtype, device=dev)

        def column(values):  # (k, 1), broadcasts along the env axis
            return torch.tensor(values, dtype=f32, device=dev)[:, None]

        self._zero = scalar(0.0)
        self._no_flap = scalar(0, torch.int64)  # actions are compared with it (any int dtype)
        self._speed_rot_step = column([config.gravity, -ROT_SPEED])  # (2, 1)
        self._speed_rot_min = column([-float("inf"), ROT_MIN])
        self._speed_rot_max = column([config.max_fall_speed, float("inf")])
        self._speed_rot_flap = column([config.flap_speed, ROT_FLAP])
        self._pipe_speed = scalar(config.pipe_speed)
        self._shift_x = scalar(SHIFT_X)
        self._gap = scalar(gap)
        self._gap_top_bottom_min = column([GAP_TOP_MIN, GAP_TOP_MIN + gap])  # (2, 1)
        self._mid = column(config.feature_mid.tolist())  # (12, 1)
        self._scale = torch.from_numpy(config.feature_scale).to(dev)  # (12,)
        self._half_x = float(SCREEN_W - config.feature_mid[0])  # 170: |x - 118| ≥ 170 is off screen
        self._half_x_t = scalar(self._half_x)
        # An off-screen pipe shows an open gap, top 0 and bottom 404, here centred (x - mid).
        self._hidden_gap = column([0 - config.feature_mid[1], GROUND_Y - config.feature_mid[2]])
        alive, alive_and_pipe, crashed = config.rewards
        # `lerp` with a full (N,) start is ~4x faster than with a 0-d one (a vectorised loop).
        self._alive = torch.full((n,), alive, dtype=f32, device=dev)  # (N,)
        self._alive_and_pipe, self._crashed = scalar(alive_and_pipe), scalar(crashed)
        # Truncation: score ≥ max_score, length ≥ max_episode_steps (those that are set).
        limits = [(row, cap) for row, cap in ((0, config.max_score), (1, max_episode_steps))
                  if cap is not None]
        if len(limits) == 2:
            self._limited, self._limits = self._score_length, column([cfg for _, cfg in limits])
        elif limits:
            (row, cap), = limits
            self._limited, self._limits = self._score_length[row], scalar(cap)
        else:
            self._limited = self._limits = None

        # Start of an episode, one column per env; rows 4, 5, 7, 8 (gap tops and bottoms of
        # the first two pipes) are rewritten with fresh random heights on every step.
        start = [-PIPE_W, 0, GROUND_Y, FIRST_PIPE_X, 0, 0, SECOND_PIPE_X, 0, 0,
                 BIRD_START_Y, config.flap_speed, ROT_FLAP, 0, 0, 0]
        self._start = column(start).repeat(1, n)  # (15, N)
        self._start_gaps = self._start[3:9].view(2, 3, n)[:, 1:3]  # (2 pipes, top/bottom, N)

        # Random gap heights: per-env table of pre-drawn offsets, and draws used so far.
        self._keys: torch.Tensor | None = None  # (N,) int64, each env's stream key
        self._table: torch.Tensor | None = None  # (N, gap_table_size) uint8
        self._table_flat: torch.Tensor | None = None  # (N * gap_table_size,) the same memory
        # Counts and positions are int32 where they fit: int32 arithmetic is about three times
        # faster than int64 on a CPU, and `index_select` takes either.
        index = torch.int32 if n * config.gap_table_size < 2**31 else torch.int64
        self._draws = torch.zeros(n, dtype=index, device=dev)  # (N,)
        self._draw_mask = scalar(config.gap_table_size - 1, index)
        self._draw_offsets = torch.arange(3, dtype=index, device=dev)[:, None]  # (3, 1) c..c+2
        # Where each env's row of the table starts in the flat table.
        self._row_starts = torch.arange(n, dtype=index, device=dev) * config.gap_table_size
        self._draw_index = torch.zeros(3, n, dtype=index, device=dev)  # (3, N)
        self._draw_index_flat = self._draw_index.view(-1)
        self._drawn_offsets_flat = torch.zeros(3 * n, dtype=torch.uint8, device=dev)
        self._drawn_offsets = self._drawn_offsets_flat.view(3, 1, n)  # (3 draws, 1, N)

        # ---- work tensors of `step`, allocated once (the step writes them with `out=`) -----
        # Conditions are float32 0/1 weights rather than bools: `lerp` by a 0/1 weight is an
        # exact selection, `maximum` an "or", `a > b` "a and not b", all fast on float32.
        def rows(*shape):
            return torch.zeros(*shape, n, dtype=f32, device=dev)

        self._flap = rows()  # (N,) 1.0 = flap
        self._hit_ceiling = rows()  # (N,)
        self._shift = rows()  # (N,) 1.0 where the pipes shift this step
        self._shift_count = torch.zeros_like(self._draws)  # (N,) the same, as a count
        # Pipes after a shift, then draws c, c+1, c+2 as pipes: rows 0-5 are next and
        # next-next (they move down one slot), 6-8 the spawning pipe (draw c), 9-14 the first
        # two pipes of an episode starting now (draws c+1, c+2 or, without a shift, c, c+1).
        self._shifted = rows(15)  # (15, N)
        drawn = self._shifted[6:15].view(3, 3, n)  # (draw, x/top/bottom, N)
        drawn[:, 0] = PIPE_SPAWN_X
        self._drawn_gaps = drawn[:, 1:3]  # (3 draws, top/bottom, N)
        self._shifted_rows, self._shifted_pipes = self._shifted[0:6], self._shifted[0:9]
        self._gaps_without_shift = self._drawn_gaps[0:2]  # (2 pipes, top/bottom, N)
        self._gaps_with_shift = self._drawn_gaps[1:3]
        # The tests of rules 7-8 are four "is v within [centre - half, centre + half]" tests,
        # done at once as |v - centre| ≤ half on a (2, 2, N) block, v being
        #   [[next pipe x, next pipe x],   in the bird's columns: 6 ≤ x ≤ 90; in the score window
        #    [bird y,      bird y     ]]   in the gap: top ≤ y ≤ bottom - 24;  on the ground: 380
        # (all values are whole or half numbers, so every comparison is exact).
        lo_x, hi_x = BIRD_X - PIPE_W + 1, BIRD_X + BIRD_W - 1  # 6, 90
        lo_score, hi_score = SCORE_X - config.pipe_speed + 1, SCORE_X  # 45, 48
        self._gap_centre = scalar((gap - BIRD_H) / 2)  # y - top of a bird centred in the gap
        self._test_values = s[_NEXT_X : _Y + 1 : _Y - _NEXT_X][:, None].expand(2, 2, n)
        self._test_centres = rows(2, 2)  # (2, 2, N); [1, 0] is the next gap's, set each step
        self._test_centres[0, 0] = (lo_x + hi_x) / 2
        self._test_centres[0, 1] = (lo_score + hi_score) / 2
        self._test_centres[1, 1] = GROUND_Y - BIRD_H  # y never exceeds it (rule 3)
        self._next_gap_centre = self._test_centres[1, 0]
        # Half widths; a gap smaller than the bird has a negative half: no y is inside.
        self._test_halves = torch.tensor([[(hi_x - lo_x) / 2, (hi_score - lo_score) / 2],
                                          [(gap - BIRD_H) / 2, 0]], dtype=f32,
                                         device=dev)[:, :, None]  # (2, 2, 1)
        self._test_gaps = rows(2, 2)  # (2, 2, N) |v - centre|
        self._tests = rows(2, 2)  # (2, 2, N) 1.0 where inside
        (self._in_columns, self._in_window), (self._in_gap, self._on_ground) = self._tests
        self._hits_pipe = rows()  # (N,)
        self._crash = rows()  # (N,)
        # Added to the (3, N) statistics [score, length, return] each step; row 1 stays 1.
        self._increments = rows(3)
        self._increments[1] = 1
        self._passed, self._reward = self._increments[0], self._increments[2]
        self._restart = rows()  # (N,) 1.0 where the episode ended and the env restarts
        self._restart_column = self._restart[:, None]  # (N, 1)
        # The end of a step touches only the envs whose episode ended or whose pipes shifted
        # (a few percent): autoreset and the lookup of the next draws run over all envs, or,
        # for thousands of envs on a CPU, over the list of those envs only. Less memory
        # traffic (the table lookups are random reads), at the price of a few more ops (a win
        # for wide batches only) and of making the list, which on CUDA would wait for the
        # device (so never there).
        self._sparse = self.device.type == "cpu" and n >= _SPARSE_MIN_ENVS
        # Features (see `_features_of`).
        self._feature_work = self._new_feature_work(n) if obs_type == "features" else None

        # The first observation of every episode is the same (both pipes are off screen), so
        # an autoreset only has to copy it.
        self._first_obs = self._features_of(column(start)[0:12])[0]  # (12,)
        if obs_type == "pixels":
            self._raster = Rasteriser(dev)  # draws the (n, 84, 84) frames of states (15, n)
            first_frame = self._render(column(start))[0]  # (84, 84)
            self._first_stack = first_frame.expand(frame_stack, PIXELS, PIXELS).clone()
            self._first_stack_words = self._first_stack.view(-1).view(torch.int64)
            self._stack: torch.Tensor | None = None  # (N, frame_stack, 84, 84)
        # The step: the C kernel (CPU, features) or the torch ops above (see the module doc).
        self._kernel: StepKernel | None = None
        self.step_kernel = self._choose_step_kernel(step_kernel)
        self._needs_reset = True

    # ---- gymnasium API -------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Start a new episode in every env; returns `(obs, info)` (tensors on the device).

        `seed=s` seeds env i with `s + i` (a list seeds each env); with no seed, each env's
        gap stream continues (or starts from fresh entropy the first time).
        """
        if seed is None and self._table is None:
            seed = self._constructor_seed
        n = self.num_envs
        if seed is not None:
            if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
                seeds = [int(seed) + i for i in range(n)]
            else:
                seeds = [int(s) for s in seed]
                if len(seeds) != n:
                    raise ValueError(f"seed list must have {n} entries, got {len(seeds)}")
            super().reset(seed=seeds[0])  # seeds `self.np_random` (the game does not use it)
            self._set_streams(seeds)
        elif self._table is None:
            self._set_streams(np.random.default_rng().integers(0, 2**63, size=n).tolist())
        self._look_up_draws()
        self._state.copy_(self._start)
        self._state[3:9].view(2, 3, n)[:, 1:3] = self._gaps_without_shift  # draws c, c+1
        self._draws.add_(2)
        self._look_up_draws()
        self._needs_reset = False
        if self.obs_type == "features":
            obs = self._first_obs.expand(n, 12).clone()
        else:
            self._stack = self._first_stack.expand(n, *self._first_stack.shape).clone()
            obs = self._stack
        return obs, {"score": self._score.clone()}

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        if self._kernel is not None:
            return self._step_with_kernel(actions)
        flap = self._flap_weight(actions)  # (N,) float32: 1.0 = flap, 0.0 = no flap
        cfg, n = self.config, self.num_envs
        # Every op below runs on whole rows (N,) or blocks of rows (k, N): at N = 1,024 an op
        # costs about as much to launch as to run, so the step is written with as few ops as
        # it takes, each writing into a preallocated tensor (`out=`, in place) where it can.

        # A note on `lerp_`: `a.lerp_(b, w)` with a weight w that is exactly 0 or 1 returns a or
        # b exactly (torch computes `a + w * (b - a)` for w < 0.5, else `b - (b - a) * (1 - w)`),
        # so it is a `torch.where` by a mask; it is used for the selections below because it is
        # several times faster than `where` on the CPU.

        # 1-2. Flap or fall, and rotation: the (2, N) rows [speed, rotation] at once.
        speed_rot = self._speed_rot
        speed_rot.add_(self._speed_rot_step)
        speed_rot.clamp_(max=self._speed_rot_max)  # speed ≤ max_fall_speed (two one-sided
        speed_rot.clamp_(min=self._speed_rot_min)  # clamps: faster than one with both bounds)
        speed_rot.lerp_(self._speed_rot_flap, flap)  # flap: [flap_speed, 45]
        # 3-4. Move, stand on the ground, and the ceiling.
        y, speed = self._y, self._speed  # (N,) each
        y.add_(speed)
        hit_ceiling = torch.lt(y, self._zero, out=self._hit_ceiling)  # (N,) 0/1
        if cfg.ceiling == "clamp":
            speed.lerp_(self._zero, hit_ceiling)
        y.clamp_(0, GROUND_Y - BIRD_H)
        # 5. Scroll.
        self._pipe_x.sub_(self._pipe_speed)
        # 6. Shift where the next pipe is behind the bird; the new pipe's gap is draw c of the
        # env's stream (c: draws used so far), looked up at the end of the previous step.
        shift = torch.lt(self._next_x, self._shift_x, out=self._shift)  # (N,) 0/1
        shift_count = torch.lt(self._next_x, self._shift_x, out=self._shift_count)  # the same
        self._shifted_rows.copy_(self._pipes_after_shift)
        self._pipes.lerp_(self._shifted_pipes, shift)
        # 7. Crash: the ground, the ceiling ("crash" rule), or the box overlapping the next pipe;
        # 8. score on the frame the pipe's centre crosses the bird's centre (see `_tests`).
        torch.add(self._next_top, self._gap_centre, out=self._next_gap_centre)
        gaps = torch.sub(self._test_values, self._test_centres, out=self._test_gaps)
        torch.le(gaps.abs_(), self._test_halves, out=self._tests)  # (2, 2, N) 0/1
        hits_pipe = torch.gt(self._in_columns, self._in_gap, out=self._hits_pipe)  # and not
        crash = torch.maximum(hits_pipe, self._on_ground, out=self._crash)  # (N,) 0/1: or
        if cfg.ceiling == "crash":
            torch.maximum(crash, hit_ceiling, out=crash)
        passed = torch.gt(self._in_window, crash, out=self._passed)  # in the window, no crash
        # 9. Reward: exact float32 values, selected by lerp.
        reward = torch.lerp(self._alive, self._alive_and_pipe, passed, out=self._reward)
        reward.lerp_(self._crashed, crash)
        self._stats.add_(self._increments)  # score += passed, length += 1, return += reward
        # 10. Episode end.
        terminated = crash.bool()
        if self._limits is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = torch.ge(self._limited, self._limits)  # (N,) or (2, N)
            if truncated.dim() == 2:
                truncated = truncated.any(0)
        done = terminated | truncated  # (N,)

        # The observation at the end of this step, before any reset: `final_obs`.
        if self.obs_type == "features":
            final_obs = self._features_of(self._features_raw, self._feature_work)  # (N, 12)
        else:
            frame = self._render(self._state)  # (N, 84, 84)
            final_obs = torch.cat((self._stack[:, 1:], frame[:, None]), dim=1)
        final_stats = self._stats.clone()  # (3, N)

        # Autoreset (SAME_STEP): ended envs restart from the start column, with the next two
        # unused draws of their stream as the gap tops of their first two pipes (c, c+1
        # without a spawn this step, c+1, c+2 with one).
        torch.lerp(self._gaps_without_shift, self._gaps_with_shift, shift, out=self._start_gaps)
        self._draws.add_(shift_count).add_(done, alpha=2)  # draws used: c += shift + 2 * done
        if self._sparse:
            restarting = done.nonzero().view(-1)  # (k,) the envs that restart
            self._state.index_copy_(1, restarting, self._start.index_select(1, restarting))
            # Draws c, c+1, c+2 for the next step, looked up only where c changed.
            self._look_up_draws(shift_count.bitwise_or_(done).nonzero().view(-1))
        else:
            restart = self._restart.copy_(done)  # (N,) lerp weight: 1.0 where the env restarts
            self._state.lerp_(self._start, restart)
            self._look_up_draws()  # draws c, c+1, c+2 for the next step
        if self.obs_type == "features" and self._sparse:
            obs = final_obs.clone()  # (N, 12)
            obs[restarting] = self._first_obs
        elif self.obs_type == "features":
            obs = torch.lerp(final_obs, self._first_obs, self._restart_column)  # (N, 12)
        else:
            # Viewed as int64 words (8 pixels each): a `where` on uint8 is ~15x slower on a CPU.
            words = torch.where(done[:, None], self._first_stack_words, final_obs.view(n, -1)
                                .view(torch.int64))  # (N, frame_stack * 84 * 84 / 8)
            obs = words.view(torch.uint8).view(final_obs.shape)
            self._stack = obs

        score, length, episode_return = final_stats
        info = {
            "score": self._score.clone(),
            "final_obs": final_obs,
            "_final_obs": done,
            "final_info": {
                "score": score,
                "episode_length": length,
                "episode_return": episode_return,
            },
            "_final_info": done,
        }
        return obs, reward.clone(), terminated, truncated, info

    def close(self, **kwargs: Any) -> None:
        self.closed = True

    def state_dict(self) -> dict[str, Any]:
        """A snapshot to continue exactly from here (a training run's checkpoint stores it).

        Tensors on the env's device plus the config as a plain dict: the whole game state,
        each env's stream key and draw count (the table is rebuilt from the keys), and for
        pixels the frame stack.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before state_dict()")
        state = {
            "config": dataclasses.asdict(self.config),
            "max_episode_steps": self.max_episode_steps,
            "state": self._state.clone(),
            "draws": self._draws.to(torch.int64, copy=True),
            "keys": self._keys.clone(),
        }
        if self.obs_type == "pixels":
            state["stack"] = self._stack.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()` of an env built with the same settings."""
        if state.get("config") != dataclasses.asdict(self.config):
            raise ValueError("the snapshot was taken with a different FlappyConfig: "
                             f"{state.get('config')} != {dataclasses.asdict(self.config)}")
        if tuple(state["state"].shape) != tuple(self._state.shape):
            raise ValueError(f"the snapshot holds {state['state'].shape[1]} envs, this env has "
                             f"{self.num_envs}")
        if ("stack" in state) != (self.obs_type == "pixels"):
            raise ValueError("the snapshot's observation type differs from this env's")
        self._state.copy_(state["state"])
        self._draws.copy_(state["draws"])
        self._set_keys(state["keys"].to(self.device, torch.int64))
        self._look_up_draws()
        if self.obs_type == "pixels":
            self._stack = state["stack"].to(self.device).clone()
        self._needs_reset = False

    def _render(self, state: torch.Tensor) -> torch.Tensor:
        """Grey frames (n, 84, 84) uint8 of states (15, n): the pipe rows 0-8 and the bird's y."""
        return self._raster(state[0:9], state[_Y])

    # ---- helpers ---------------------------------------------------------------------------
    def _set_streams(self, seeds: list[int]) -> None:
        keys = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64,
                            device=self.device)  # (N,)
        self._set_keys(keys)
        self._draws.zero_()

    def _set_keys(self, keys: torch.Tensor) -> None:
        self._keys = keys
        self._table = gap_table(keys, self.config)  # (N, gap_table_size)
        self._table_flat = self._table.view(-1)  # looked up with one flat index per draw

    def _look_up_draws(self, envs: torch.Tensor | None = None) -> None:
        """Gap tops and bottoms of draws c, c+1, c+2 of each env's stream into `_drawn_gaps`.

        c is the number of draws used so far (`_draws`). `envs`: the (k,) int64 envs to update
        (all when None): on a wide batch only the few whose c changed.
        """
        if envs is None:
            idx = torch.add(self._draws, self._draw_offsets, out=self._draw_index)  # (3, N)
            idx.bitwise_and_(self._draw_mask).add_(self._row_starts)  # in the flat table
            torch.index_select(self._table_flat, 0, self._draw_index_flat,
                               out=self._drawn_offsets_flat)  # (3 * N,) uint8
            # (3 draws, top/bottom, N): offset + [80, 80 + gap]
            torch.add(self._drawn_offsets, self._gap_top_bottom_min, out=self._drawn_gaps)
            return
        k = len(envs)
        idx = self._draws.index_select(0, envs) + self._draw_offsets  # (3, k)
        idx.bitwise_and_(self._draw_mask).add_(envs, alpha=self.config.gap_table_size)
        offsets = torch.index_select(self._table_flat, 0, idx.view(-1)).view(3, 1, k)
        self._drawn_gaps.index_copy_(2, envs, offsets + self._gap_top_bottom_min)

    def _step_with_kernel(
        self, actions: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """`step` by the C kernel: the same step as the torch ops, one call over all envs."""
        actions = self._actions_tensor(actions)
        check = self.validate_actions and actions.dtype != torch.bool
        outputs = self._kernel.step(self._table_flat, actions, check)
        if outputs is None:
            self._raise_bad_actions(actions)
        (obs, final_obs, reward, score, final_score, length, episode_return, terminated,
         truncated, done) = outputs  # new tensors
        info = {
            "score": score,
            "final_obs": final_obs,
            "_final_obs": done,
            "final_info": {
                "score": final_score,
                "episode_length": length,
                "episode_return": episode_return,
            },
            "_final_info": done,
        }
        return obs, reward, terminated, truncated, info

    def _choose_step_kernel(self, requested: str) -> str:
        """"c" or "torch" for `step_kernel=requested`; builds the C kernel when it is "c"."""
        if requested == "torch":
            return "torch"
        if self.device.type != "cpu":
            reason = f"it runs on the CPU only, this env is on {self.device}"
        elif self.obs_type != "features":
            reason = "it computes features only, this env has pixel observations"
        else:
            try:
                self._kernel = StepKernel(self.config, self.num_envs, self.max_episode_steps,
                                          self._state, self._draws, self._first_obs)
                return "c"
            except KernelUnavailable as exc:
                if requested == "c":
                    raise ValueError(f"step_kernel='c' is not possible: {exc}") from None
                warn_unavailable(str(exc))
                return "torch"
        if requested == "c":
            raise ValueError(f"step_kernel='c' is not possible: {reason}")
        return "torch"  # "auto": the torch step is the one for GPUs and pixels

    def _actions_tensor(self, actions: Any) -> torch.Tensor:
        """The actions as an `(N,)` integer or bool tensor on the device (shape and dtype checked)."""
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(np.asarray(actions))
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), one 0/1 per env, "
                f"got shape {tuple(actions.shape)}"
            )
        if actions.device != self.device:
            actions = actions.to(self.device)
        if actions.dtype.is_floating_point or actions.dtype.is_complex:
            raise TypeError(f"actions must be an integer or bool tensor, got {actions.dtype}")
        return actions

    def _raise_bad_actions(self, actions: torch.Tensor) -> None:
        bad = actions[(actions != 0) & (actions != 1)]
        raise ValueError(f"actions must be 0 (do nothing) or 1 (flap), got {bad[:5].tolist()}")

    def _flap_weight(self, actions: Any) -> torch.Tensor:
        """Check the actions; float32 `(N,)` on the device, 1.0 = flap (a work tensor of `step`,
        overwritten by the next call)."""
        actions = self._actions_tensor(actions)
        if actions.dtype != torch.bool and self.validate_actions:
            low, high = torch.aminmax(actions)  # one pass; two numbers to the host
            if low.item() < 0 or high.item() > 1:
                self._raise_bad_actions(actions)
        return torch.ne(actions, self._no_flap, out=self._flap)  # any non-zero value flaps

    def _new_feature_work(self, n: int) -> _FeatureWork:
        centred = torch.empty(12, n, dtype=torch.float32, device=self.device)
        hidden = torch.empty(3, n, dtype=torch.float32, device=self.device)
        return _FeatureWork(centred=centred, pipe_x=centred[0:9:3],
                            pipe_gaps=centred[0:9].view(3, 3, n)[:, 1:3],
                            abs_x=torch.empty_like(hidden), hidden=hidden,
                            hidden_per_pipe=hidden[:, None], by_env=centred.T)

    def _features_of(self, raw: torch.Tensor, work: _FeatureWork | None = None) -> torch.Tensor:
        """Normalised features `(n, 12)` from raw state rows `(12, n)`; a new tensor.

        The same arithmetic as `FlappyBirdEnv._observe`: off-screen pipes are reported at the
        edge with an open gap, then `(raw - mid) * scale` in float32. The last operation also
        transposes to one row per env (contiguous), the layout a network expects. `work`:
        scratch tensors for n envs (made here when not given).
        """
        n = raw.shape[1]
        if work is None:
            work = self._new_feature_work(n)
        torch.sub(raw, self._mid, out=work.centred)  # (12, n), centred: exact
        abs_x = torch.abs(work.pipe_x, out=work.abs_x)  # (3, n)
        torch.ge(abs_x, self._half_x_t, out=work.hidden)  # (3, n) 1.0: no pixel on screen
        work.pipe_x.clamp_(-self._half_x, self._half_x)  # at the edge it lies beyond
        work.pipe_gaps.lerp_(self._hidden_gap, work.hidden_per_pipe)  # (3, 2, n): open gap
        out = torch.empty(n, 12, dtype=raw.dtype, device=raw.device)  # (n, 12)
        return torch.mul(work.by_env, self._scale, out=out)


def make_batched_flappy(
    num_envs: int,
    device: str | torch.device = "auto",
    seed: int | None = None,
    obs_type: str = "features",
    **kwargs: Any,
) -> BatchedFlappyBird:
    """Build a `BatchedFlappyBird`; its first `reset()` seeds env i with `seed + i`.

    `device="auto"` picks CUDA when present. `kwargs` are the other arguments of
    `BatchedFlappyBird` (max_episode_steps, frame_stack, validate_actions, config) and any
    `FlappyConfig` field (pipe_gap=..., ceiling=...). Call `obs, info = env.reset()` next.
    """
    return BatchedFlappyBird(num_envs, device=device, obs_type=obs_type, seed=seed, **kwargs)

