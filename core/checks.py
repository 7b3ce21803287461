"""Input checks that name the offending tensor or hyperparameter.

A NaN that reaches an optimiser silently ruins a model; these checks stop the run at the
first bad tensor instead, with its name in the message. Each check costs one device-to-host
synchronisation, so callers use them once per batch or update, never per environment step.
"""

from __future__ import annotations

import torch

__all__ = [
    "NonFiniteError",
    "check_finite",
    "check_same_shape",
    "check_probability",
    "check_positive",
    "check_in_range",
]


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or inf."""


def check_finite(**tensors: torch.Tensor | None) -> None:
    """Raise `NonFiniteError` naming the first tensor that holds NaN or inf.

    Usage: `check_finite(rewards=rewards, values=values)`; `None` entries are skipped.
    """
    for name, tensor in tensors.items():
        if tensor is None or not torch.is_floating_point(tensor):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            n_bad = int((~finite).sum())
            has_nan = bool(torch.isnan(tensor).any())
            kind = "NaN" if has_nan else "inf"
            raise NonFiniteError(
                f"{name} contains {kind} ({n_bad} of {tensor.numel()} entries are not finite)"
            )


def check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise `ValueError` naming the first tensor whose shape differs from `reference`."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ValueError(
                f"shape mismatch: {name} has shape {tuple(tensor.shape)} but {reference_name} "
                f"has shape {tuple(reference.shape)}"
            )


def check_probability(name: str, value: float) -> None:
    """A hyperparameter that must lie in [0, 1] (γ, λ)."""
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """A hyperparameter that must be > 0 (or ≥ 0 with `allow_zero`)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value:  # value != value catches NaN
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_in_range(name: str, value: float, low: float, high: float) -> None:
    """A hyperparameter that must lie in [low, high]."""
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")

