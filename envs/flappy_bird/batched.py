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
     replaced by `[flap_speed, 45]` where the action is a flap (one op each on the `(2, N)`
     rows).
3-4. `y += speed`, clamped to `[0, GROUND_Y - BIRD_H]`; where `y` went below 0 the speed is
     zeroed ("clamp") or the env crashes ("crash").
5.   the x of all three pipes `-= pipe_speed` (one op on the `(3, N)` rows of pipe x).
6.   where the next pipe is behind the bird, the 9 pipe rows are replaced by the shifted
     ones plus a new pipe whose gap top is looked up in the env's table of pre-drawn heights.
7-10. crash, score, reward and end are elementwise comparisons of `(N,)` rows.

No Python loop runs over envs and nothing is copied to the host (except the optional check of
action values). All state values are whole numbers, which float32 holds exactly, so the
arithmetic is exact and matches the single env's Python integers.

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
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from core.device import resolve_device

from .render import GRAY
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
    SCREEN_H,
    SCREEN_W,
    SECOND_PIPE_X,
    SHIFT_X,
    FlappyConfig,
    gap_table,
    seed_key,
)

__all__ = ["BatchedFlappyBird", "make_batched_flappy", "PIXELS"]

PIXELS = 84  # side of the square grey image of obs_type="pixels"

# Rows of the state tensor (15, N), float32. 0-11 are the raw features, in the order of
# rules.FEATURE_NAMES; 12-14 are episode statistics.
_NEXT_X, _NEXT_TOP, _NEXT_BOTTOM = 3, 4, 5
_Y, _SPEED, _ROT = 9, 10, 11
_SCORE, _LENGTH, _RETURN = 12, 13, 14
_STATE_ROWS = 15


class BatchedFlappyBird(VectorEnv):
    """`num_envs` Flappy Bird games as tensors on `device`, with SAME_STEP autoreset.

    Args:
        num_envs: number of games N.
        device: "cpu", "cuda", "cuda:1", "auto" or a `torch.device`.
        obs_type: "features" → float32 `(N, 12)` in [-1, 1] (see `FlappyBirdEnv`);
            "pixels" → uint8 `(N, frame_stack, 84, 84)`, the scene rasterised on the device
            as flat grey rectangles (sky, pipes, ground, the bird's box), the last
            `frame_stack` frames stacked, oldest first.
        max_episode_steps: truncate an episode after this many frames (None: never).
        frame_stack: frames per pixel observation.
        validate_actions: check that integer actions are 0 or 1. This costs one host sync per
            step on CUDA; bool actions are never checked (they cannot be out of range).
        seed: the seed of the first `reset()` that is given none (as if passed to it).
        render_mode: only None (a batched env does not render; use `FlappyBirdEnv`).
        config / **config_fields: the game settings, as for `FlappyBirdEnv`.

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
        **config_fields: Any,
    ):
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
        self._next_x, self._next_top, self._next_bottom = s[_NEXT_X], s[_NEXT_TOP], s[_NEXT_BOTTOM]
        self._y, self._speed = s[_Y], s[_SPEED]
        self._speed_rot = s[_SPEED : _ROT + 1]  # (2, N)
        self._features_raw = s[0:12]  # (12, N)
        self._stats = s[_SCORE : _RETURN + 1]  # (3, N) score, length, return
        self._score, self._length, self._return = s[_SCORE], s[_LENGTH], s[_RETURN]

        # ---- constants of the step, as tensors on the device ------------------------------
        def column(values):  # (k, 1), broadcasts along the env axis
            return torch.tensor(values, dtype=f32, device=dev)[:, None]

        self._speed_rot_step = column([config.gravity, -ROT_SPEED])  # (2, 1)
        self._speed_rot_min = column([-float("inf"), ROT_MIN])
        self._speed_rot_max = column([config.max_fall_speed, float("inf")])
        self._speed_rot_flap = column([config.flap_speed, ROT_FLAP])
        self._mid = column(config.feature_mid.tolist())  # (12, 1)
        self._scale = torch.from_numpy(config.feature_scale).to(dev)  # (12,)
        self._half_x = float(SCREEN_W - config.feature_mid[0])  # 170: |x - 118| ≥ 170 is off screen
        self._hidden_top = float(0 - config.feature_mid[1])  # an open gap: top 0 ...
        self._hidden_bottom = float(GROUND_Y - config.feature_mid[2])  # ... bottom 404
        self._rewards = config.rewards

        # Start of an episode, one column per env; rows 4, 5, 7, 8 (gap tops and bottoms of
        # the first two pipes) are rewritten with fresh random heights on every step.
        start = [-PIPE_W, 0, GROUND_Y, FIRST_PIPE_X, 0, 0, SECOND_PIPE_X, 0, 0,
                 BIRD_START_Y, config.flap_speed, ROT_FLAP, 0, 0, 0]
        self._start = column(start).repeat(1, n)  # (15, N)
        self._start_tops = self._start[4:9:3]  # (2, N)
        self._start_bottoms = self._start[5:9:3]  # (2, N)
        # Pipes after a shift: next and next-next move down one slot, a new pipe spawns.
        self._shifted = torch.zeros(9, n, dtype=f32, device=dev)  # (9, N)
        self._shifted[6] = PIPE_SPAWN_X
        self._gap = gap
        # Random gap heights: per-env table of pre-drawn offsets, and draws used so far.
        self._keys: torch.Tensor | None = None  # (N,) int64, each env's stream key
        self._table: torch.Tensor | None = None  # (N, gap_table_size) uint8
        self._draws = torch.zeros(n, dtype=torch.int64, device=dev)  # (N,)
        self._draw_mask = config.gap_table_size - 1
        self._fresh_tops = torch.zeros(3, n, dtype=f32, device=dev)  # (3, N) tops of draws c..c+2
        self._arange3 = torch.arange(3, device=dev)  # (3,)

        # The first observation of every episode is the same (both pipes are off screen), so
        # an autoreset only has to copy it.
        self._first_obs = self._features_of(column(start)[0:12])[0]  # (12,)
        if obs_type == "pixels":
            self._setup_pixels()
            first_frame = self._render(column(start))[0]  # (84, 84)
            self._first_stack = first_frame.expand(frame_stack, PIXELS, PIXELS).clone()
            self._first_stack_words = self._first_stack.view(-1).view(torch.int64)
            self._stack: torch.Tensor | None = None  # (N, frame_stack, 84, 84)
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
        self._state.copy_(self._start)
        idx = (self._draws[:, None] + self._arange3[:2]).bitwise_and_(self._draw_mask)  # (N, 2)
        tops = torch.gather(self._table, 1, idx).T.float().add_(GAP_TOP_MIN)  # (2, N)
        self._pipes[4:9:3] = tops
        self._pipes[5:9:3] = tops + self._gap
        self._draws.add_(2)
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
        flap = self._flap_weight(actions)  # (N,) float32: 1.0 = flap, 0.0 = no flap
        cfg, n = self.config, self.num_envs

        # A note on `lerp_`: `a.lerp_(b, w)` with a weight w that is exactly 0 or 1 returns a or
        # b exactly (torch computes `a + w * (b - a)` for w < 0.5, else `b - (b - a) * (1 - w)`),
        # so it is a `torch.where` by a mask; it is used for the wide selections below because
        # it is about twice as fast as `where` on the CPU.

        # 1-2. Flap or fall, and rotation: the (2, N) rows [speed, rotation] at once.
        speed_rot = self._speed_rot
        speed_rot.add_(self._speed_rot_step)
        speed_rot.clamp_(self._speed_rot_min, self._speed_rot_max)
        speed_rot.lerp_(self._speed_rot_flap, flap)  # flap: [flap_speed, 45]
        # 3-4. Move, stand on the ground, and the ceiling.
        y = self._y  # (N,)
        y.add_(self._speed)
        hit_ceiling = y < 0  # (N,)
        if cfg.ceiling == "clamp":
            self._speed.masked_fill_(hit_ceiling, 0.0)
        y.clamp_(0, GROUND_Y - BIRD_H)
        # 5. Scroll.
        self._pipe_x.sub_(cfg.pipe_speed)
        # 6. Shift where the next pipe is behind the bird. Draws c, c+1, c+2 of each env's
        # stream are looked up at once: c for a spawn now, and the first two unused ones for
        # the next episode if this one ends (c, c+1 without a spawn, c+1, c+2 with one).
        shift = self._next_x < SHIFT_X  # (N,)
        idx = (self._draws[:, None] + self._arange3).bitwise_and_(self._draw_mask)  # (N, 3)
        offsets = torch.gather(self._table, 1, idx)  # (N, 3) uint8
        fresh_tops = torch.add(offsets.T, float(GAP_TOP_MIN), out=self._fresh_tops)  # (3, N)
        self._shifted[0:6] = self._pipes_after_shift
        self._shifted[7] = fresh_tops[0]
        torch.add(fresh_tops[0], self._gap, out=self._shifted[8])
        shift_weight = shift.float()  # (N,) 1.0 where the pipes shift
        self._pipes.lerp_(self._shifted, shift_weight)
        self._draws.add_(shift)
        # 7. Crash: the ground, the ceiling ("crash" rule), or the box overlapping the next pipe.
        x, top, bottom = self._next_x, self._next_top, self._next_bottom  # (N,) each
        in_pipe_columns = (x > BIRD_X - PIPE_W) & (x < BIRD_X + BIRD_W)
        outside_gap = (y < top) | (y > bottom - BIRD_H)
        crash = (in_pipe_columns & outside_gap) | (y >= GROUND_Y - BIRD_H)  # (N,)
        if cfg.ceiling == "crash":
            crash |= hit_ceiling
        # 8. Score on the frame the pipe's centre crosses the bird's centre.
        window = (x > SCORE_X - cfg.pipe_speed) & (x <= SCORE_X)  # (N,)
        passed = torch.gt(window, crash)  # window and not crash (True > False is the only >)
        self._score.add_(passed)
        self._length.add_(1)
        # 9. Reward.
        alive, alive_and_pipe, crashed = self._rewards
        reward = torch.full_like(y, alive).masked_fill_(passed, alive_and_pipe)  # (N,)
        reward.masked_fill_(crash, crashed)
        self._return.add_(reward)
        # 10. Episode end.
        terminated = crash
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(crash)
        else:
            truncated = self._length >= self.max_episode_steps
        if cfg.max_score is not None:
            truncated |= self._score >= cfg.max_score
        done = terminated | truncated  # (N,)
        restart = done.float()  # (N,) lerp weight: 1.0 where the env restarts

        # The observation at the end of this step, before any reset: `final_obs`.
        if self.obs_type == "features":
            final_obs = self._features_of(self._features_raw)  # (N, 12)
        else:
            frame = self._render(self._state)  # (N, 84, 84)
            final_obs = torch.cat((self._stack[:, 1:], frame[:, None]), dim=1)
        final_stats = self._stats.clone()  # (3, N)

        # Autoreset (SAME_STEP): ended envs restart from the start column, with the next two
        # unused draws of their stream as the gap tops of their first two pipes.
        torch.lerp(fresh_tops[0:2], fresh_tops[1:3], shift_weight, out=self._start_tops)
        torch.add(self._start_tops, self._gap, out=self._start_bottoms)
        self._state.lerp_(self._start, restart)
        self._draws.add_(done, alpha=2)
        if self.obs_type == "features":
            obs = torch.lerp(final_obs, self._first_obs, restart[:, None])
        else:
            # Viewed as int64 words (8 pixels each): a `where` on uint8 is ~15x slower on a CPU.
            words = torch.where(done[:, None], self._first_stack_words, final_obs.view(n, -1)
                                .view(torch.int64))  # (N, frame_stack * 84 * 84 / 8)
            obs = words.view(torch.uint8).view(final_obs.shape)
            self._stack = obs

        info = {
            "score": self._score.clone(),
            "final_obs": final_obs,
            "_final_obs": done,
            "final_info": {
                "score": final_stats[0],
                "episode_length": final_stats[1],
                "episode_return": final_stats[2],
            },
            "_final_info": done,
        }
        return obs, reward, terminated, truncated, info

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
            "draws": self._draws.clone(),
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
        self._keys = state["keys"].to(self.device, torch.int64)
        self._table = gap_table(self._keys, self.config)
        if self.obs_type == "pixels":
            self._stack = state["stack"].to(self.device).clone()
        self._needs_reset = False

    # ---- helpers ---------------------------------------------------------------------------
    def _set_streams(self, seeds: list[int]) -> None:
        self._keys = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64,
                                  device=self.device)  # (N,)
        self._table = gap_table(self._keys, self.config)
        self._draws.zero_()

    def _flap_weight(self, actions: Any) -> torch.Tensor:
        """Check the actions and return them as float32 `(N,)` on the device (1.0 = flap)."""
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
        if (
            actions.dtype != torch.bool
            and self.validate_actions
            and bool(actions.bitwise_and(-2).any())  # some action has a bit other than 1 set
        ):
            bad = actions[(actions != 0) & (actions != 1)]
            raise ValueError(f"actions must be 0 (do nothing) or 1 (flap), got {bad[:5].tolist()}")
        return actions.to(torch.float32)

    def _features_of(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalised features `(n, 12)` from raw state rows `(12, n)`; a new tensor.

        The same arithmetic as `FlappyBirdEnv._observe`: off-screen pipes are reported at the
        edge with an open gap, then `(raw - mid) * scale` in float32. The last operation also
        transposes to one row per env (contiguous), the layout a network expects.
        """
        obs = raw - self._mid  # (12, n), centred: exact
        x = obs[0:9:3]  # (3, n)
        hidden = x.abs() >= self._half_x  # (3, n) no pixel of the pipe on screen
        x.clamp_(-self._half_x, self._half_x)
        obs[1:9:3].masked_fill_(hidden, self._hidden_top)
        obs[2:9:3].masked_fill_(hidden, self._hidden_bottom)
        out = torch.empty(raw.shape[1], 12, dtype=raw.dtype, device=raw.device)  # (n, 12)
        return torch.mul(obs.T, self._scale, out=out)

    # ---- pixels ----------------------------------------------------------------------------
    def _setup_pixels(self) -> None:
        dev = self.device
        # Centres of the 84 × 84 pixels in screen coordinates (px); the screen is squeezed
        # like gymnasium's ResizeObservation would, 288 → 84 columns and 512 → 84 rows.
        rows = (torch.arange(PIXELS, device=dev) + 0.5) * (SCREEN_H / PIXELS)  # (84,)
        cols = (torch.arange(PIXELS, device=dev) + 0.5) * (SCREEN_W / PIXELS)  # (84,)
        self._sky_rows = int((rows < GROUND_Y).sum())  # rows above the ground
        self._rows = rows[: self._sky_rows]  # (R,)
        self._cols = cols  # (84,)
        bird_cols = ((cols >= BIRD_X) & (cols < BIRD_X + BIRD_W)).nonzero()[:, 0]  # fixed
        self._bird_cols = slice(int(bird_cols[0]), int(bird_cols[-1]) + 1)  # a band of columns
        background = torch.full((PIXELS, PIXELS), GRAY["ground"], dtype=torch.uint8, device=dev)
        background[: self._sky_rows] = GRAY["sky"]
        self._background = background  # (84, 84)

    def _render(self, state: torch.Tensor) -> torch.Tensor:
        """Grey frames `(n, 84, 84)` uint8 of states `(15, n)`: sky, pipes, ground, bird."""
        n = state.shape[1]
        far = 4 * SCREEN_H  # a row index no pixel reaches
        x = state[0:9:3].T[:, :, None]  # (n, 3, 1) left edges
        top, bottom = state[1:9:3].T[:, :, None], state[2:9:3].T[:, :, None]  # (n, 3, 1)
        d = self._cols - x  # (n, 3, 84): pixel centre minus pipe left edge
        covers = ((d >= 0) & (d < PIPE_W)).float()  # (n, 3, 84) column inside pipe s
        # Pipes never overlap (they are ≥ 144 px apart), so each column is covered by at most
        # one pipe: sums over s pick its gap; uncovered columns get an "open" gap (-1, far).
        col_top = (covers * (top + 1)).sum(1) - 1  # (n, 84)
        col_bottom = far - (covers * (far - bottom)).sum(1)  # (n, 84)
        rows = self._rows[None, :, None]  # (1, R, 1)
        pipe = (rows < col_top[:, None, :]) | (rows >= col_bottom[:, None, :])  # (n, R, 84)
        y = state[_Y][:, None]  # (n, 1)
        bird_rows = (self._rows >= y) & (self._rows < y + BIRD_H)  # (n, R)
        frame = self._background.expand(n, PIXELS, PIXELS).clone()  # (n, 84, 84)
        sky = frame[:, : self._sky_rows]  # (n, R, 84)
        sky.masked_fill_(pipe, GRAY["pipe"])
        sky[:, :, self._bird_cols].masked_fill_(bird_rows[:, :, None], GRAY["bird"])  # on top
        return frame


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

