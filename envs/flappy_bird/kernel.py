"""The C step kernel of `BatchedFlappyBird` on the CPU: `step.c`, compiled on first use.

`step.c` steps all N games in one call (the rules of `rules.py` in their order, over blocks
of 64 envs), reading and writing the env's own state tensors in place. This module builds it
and calls it:

- compiling: the system C compiler (`$CC`, else the compiler Python was built with, else
  `cc`) makes a shared library of `step.c`, in about a second, into a per-user cache
  folder (`$XDG_CACHE_HOME/proximal`, else `~/.cache/proximal`). The file's name carries a
  hash of the source, the compiler command and the machine, so an edited `step.c` is rebuilt
  and an unchanged one is compiled once per machine; it is written under a temporary name and
  then renamed, so processes starting together never load a half-written library.
- calling: `ctypes`, with the addresses (`data_ptr()`) of the tensors. Dtypes, shapes and
  contiguity are checked once, when `StepKernel` is made (and when the env's gap table is
  replaced, at a seeded reset); a step only passes addresses.

No torch C++ extension: building one takes about a minute, and the kernel needs nothing of
torch but the tensors' memory. `load()` raises `KernelUnavailable`, naming the reason (no
compiler, a failed compile), when the kernel cannot be built; `BatchedFlappyBird(...,
step_kernel="auto")` then uses its torch step.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["SOURCE", "FLAGS", "KernelUnavailable", "StepKernel", "compiler", "cache_dir", "load",
           "warn_unavailable"]

SOURCE = Path(__file__).with_name("step.c")
# -ffp-contract=off: no fused multiply-add, so every float32 operation rounds as torch's does.
# -O3 -fno-trapping-math: the loops over a block of envs become vector instructions (selections
# between float32 values without branches); neither changes any result.
FLAGS = ("-O3", "-fno-trapping-math", "-ffp-contract=off", "-std=c99", "-fPIC", "-shared")
FEATURES = 12  # the features of one observation


class KernelUnavailable(RuntimeError):
    """The C kernel cannot be used here; the message says why."""


class FlappyParams(ctypes.Structure):
    """The settings of `step.c`'s `FlappyParams`, field for field."""

    _fields_ = [
        ("num_envs", ctypes.c_int64),
        ("gap_table_size", ctypes.c_int64),
        ("draws_are_int64", ctypes.c_int32),
        ("ceiling_crash", ctypes.c_int32),
        ("gravity", ctypes.c_float),
        ("flap_speed", ctypes.c_float),
        ("max_fall_speed", ctypes.c_float),
        ("pipe_speed", ctypes.c_float),
        ("pipe_gap", ctypes.c_float),
        ("reward_alive", ctypes.c_float),
        ("reward_alive_and_pipe", ctypes.c_float),
        ("reward_crash", ctypes.c_float),
        ("max_score", ctypes.c_float),
        ("max_episode_steps", ctypes.c_float),
        ("feature_mid", ctypes.c_float * FEATURES),
        ("feature_scale", ctypes.c_float * FEATURES),
        ("first_obs", ctypes.c_float * FEATURES),
    ]


def compiler() -> list[str]:
    """The C compiler command: `$CC` when set, else the one Python was built with (sysconfig)
    when this machine has it, else `cc`."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    words = shlex.split(sysconfig.get_config_var("CC") or "")
    return words if words and shutil.which(words[0]) else ["cc"]


def cache_dir() -> Path:
    """The per-user folder of compiled kernels: `$XDG_CACHE_HOME/proximal` or `~/.cache/proximal`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "proximal"


def _build() -> Path:
    """The path of the compiled library, compiling `step.c` first if it is not in the cache."""
    command = [*compiler(), *FLAGS]
    if not shutil.which(command[0]):
        raise KernelUnavailable(f"no C compiler found (tried {command[0]!r}; set CC to one)")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), shlex.join(command).encode(), platform.machine().encode(),
                 sys.platform.encode()):
        key.update(part + b"\0")
    folder = cache_dir()
    library = folder / f"flappy_step-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=library.stem + ".", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write to the kernel cache {folder}: {exc}") from None
    try:
        result = subprocess.run([*command, "-o", temporary, str(SOURCE)], capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise KernelUnavailable(f"compiling {SOURCE.name} with {command[0]} failed: {first}")
        os.replace(temporary, library)  # atomic: another process sees all of it or nothing
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"compiling {SOURCE.name} with {command[0]} failed: {exc}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


_library: ctypes.CDLL | KernelUnavailable | None = None  # the loaded library, or why it failed


def load() -> ctypes.CDLL:
    """The loaded kernel (compiled on the first call of the process if needed).

    Raises `KernelUnavailable` naming the reason; the outcome is remembered for the process.
    """
    global _library
    if _library is None:
        try:
            library = ctypes.CDLL(str(_build()))
            step = library.flappy_step
        except KernelUnavailable as exc:
            _library = exc
        except OSError as exc:  # a library that does not load (another machine's, a bad file)
            _library = KernelUnavailable(f"cannot load the compiled {SOURCE.name}: {exc}")
        else:
            step.restype = ctypes.c_int64
            step.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32] * 2 + [ctypes.c_void_p] * 10
            _library = library
    if isinstance(_library, KernelUnavailable):
        raise _library
    return _library


_warned = False


def warn_unavailable(reason: str) -> None:
    """Say once per process that the C kernel is unavailable and the torch step is used."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"BatchedFlappyBird uses its torch step on the CPU (slower): {reason}",
                      RuntimeWarning, stacklevel=4)


def _check(tensor: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...]):
    if (tensor.device.type != "cpu" or tensor.dtype not in dtypes or tuple(tensor.shape) != shape
            or not tensor.is_contiguous()):
        raise ValueError(f"the C step kernel needs {name} as a contiguous CPU tensor {shape} of "
                         f"{'/'.join(map(str, dtypes))}, got {tensor.dtype} {tuple(tensor.shape)} on "
                         f"{tensor.device}")


class StepKernel:
    """`step.c` bound to one env's state tensors: `step(table, actions, check)` steps them.

    `state` float32 (15, N) and `draws` int32 or int64 (N,) are the env's tensors, updated in
    place by every step; `first_obs` (12,) is the first observation of every episode.
    """

    def __init__(self, config, num_envs: int, max_episode_steps: int | None,
                 state: torch.Tensor, draws: torch.Tensor, first_obs: torch.Tensor):
        self._step = load().flappy_step
        n = num_envs
        _check(state, "the state", (torch.float32,), (15, n))
        _check(draws, "the draw counts", (torch.int32, torch.int64), (n,))
        inf = float("inf")
        alive, alive_and_pipe, crashed = config.rewards

        def floats(values) -> ctypes.Array:
            return (ctypes.c_float * FEATURES)(*values)

        self.params = FlappyParams(
            num_envs=n, gap_table_size=config.gap_table_size,
            draws_are_int64=draws.dtype == torch.int64, ceiling_crash=config.ceiling == "crash",
            gravity=config.gravity, flap_speed=config.flap_speed,
            max_fall_speed=config.max_fall_speed, pipe_speed=config.pipe_speed,
            pipe_gap=config.pipe_gap, reward_alive=alive, reward_alive_and_pipe=alive_and_pipe,
            reward_crash=crashed,
            # the caps, rounded to float32 as the torch step's tensors hold them (no cap: inf)
            max_score=inf if config.max_score is None else config.max_score,
            max_episode_steps=inf if max_episode_steps is None else max_episode_steps,
            feature_mid=floats(config.feature_mid.tolist()),
            feature_scale=floats(config.feature_scale.tolist()),
            first_obs=floats(first_obs.tolist()),
        )
        self.num_envs, self.table_size = n, config.gap_table_size
        self._params = ctypes.addressof(self.params)
        self._state, self._draws = state, draws  # kept alive while their addresses are used
        self._state_ptr, self._draws_ptr = state.data_ptr(), draws.data_ptr()
        self._table: torch.Tensor | None = None
        self._table_ptr = 0
        # Prototypes of the outputs: `empty_like` is the cheapest way to a new tensor of a shape
        # and dtype (a step makes ten; their allocation is most of a step's cost at N = 1,024).
        self._obs_like = torch.empty(n, FEATURES, dtype=torch.float32)
        self._row_like = torch.empty(n, dtype=torch.float32)
        self._flag_like = torch.empty(n, dtype=torch.bool)

    def step(self, table: torch.Tensor, actions: torch.Tensor, check: bool):
        """One step of all envs, or None when `check` is set and an action is neither 0 nor 1
        (then nothing changed).

        `table`: the env's flat gap table (N * gap_table_size,) uint8; `actions`: (N,) integer
        or bool on the CPU (any non-zero value flaps). Returns ten new tensors (nothing of a
        step's output is ever written again): obs and final_obs float32 (N, 12); reward,
        score, and the episode's score, length and return at the end of the step, float32
        (N,); terminated, truncated and done, bool (N,).
        """
        if table is not self._table:  # a new table (a seeded reset, a loaded state): check it once
            _check(table, "the gap table", (torch.uint8,), (self.num_envs * self.table_size,))
            self._table, self._table_ptr = table, table.data_ptr()
        if not actions.is_contiguous():
            actions = actions.contiguous()
        new, obs, row, flag = torch.empty_like, self._obs_like, self._row_like, self._flag_like
        outputs = (new(obs), new(obs),  # obs, final_obs
                   new(row), new(row), new(row), new(row), new(row),  # reward ... episode return
                   new(flag), new(flag), new(flag))  # terminated, truncated, done
        bad = self._step(self._params, self._state_ptr, self._draws_ptr, self._table_ptr,
                         actions.data_ptr(), actions.element_size(), check,
                         *[tensor.data_ptr() for tensor in outputs])
        return None if bad else outputs
