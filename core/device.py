"""Device and seed helpers shared by both front ends.

Code in `core/` follows the device of its input tensors; these helpers only decide where a
front end *creates* its tensors and how it seeds every random number generator at once.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N` into a `torch.device`.

    `auto` picks CUDA when a GPU is visible and the CPU otherwise. Asking for CUDA on a
    machine without it is an error rather than a silent fall-back to the CPU, so a run never
    takes ten times longer than its user expects without saying why.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {name!r}")
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available on this machine; "
                "use --device cpu or --device auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return device
    raise ValueError(f"unknown device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python's `random`, NumPy and torch (CPU and every CUDA device).

    Returns a CPU `torch.Generator` seeded with `seed` for code that wants its own stream.
    With `deterministic=True`, torch is asked for deterministic kernels as well (slower on
    CUDA; on the CPU our code is deterministic already).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- seeds the legacy global stream libraries still use
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)
