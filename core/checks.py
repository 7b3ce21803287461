"""Input checks that name the offending tensor or hyperparameter.

A NaN that reaches an optimiser silently ruins a model; these checks stop the run at the
first bad tensor instead, with its name in the message. Each check costs one device-to-host
synchronisation, so callers use them once per batch or update, never per environment step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from core.kl import KLController
    from core.ppo import Evaluation, PPOConfig

__all__ = [
    "NonFiniteError",
    "check_finite",
    "check_same_shape",
    "check_probability",
    "check_positive",
    "check_in_range",
    "check_ppo_config",
    "check_batch",
    "check_evaluation",
    "one_per_step",
    "REQUIRED_BATCH_KEYS",
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


# ---------------------------------------------------------------------------------------------
# The inputs of core.ppo: its configuration, its batch, and what evaluate(minibatch) returns
# ---------------------------------------------------------------------------------------------

REQUIRED_BATCH_KEYS = ("actions", "logprobs", "advantages", "returns", "values")


def check_ppo_config(config: PPOConfig) -> None:
    """Raise ValueError naming the first field of a `core.ppo.PPOConfig` that is out of range."""
    check_positive("clip_coef", config.clip_coef)
    if config.clip_coef_high is not None:
        check_positive("clip_coef_high", config.clip_coef_high)
        if config.clip_coef_high < config.clip_coef:
            raise ValueError(
                f"clip_coef_high (ε_high = {config.clip_coef_high}) must be ≥ clip_coef "
                f"(ε_low = {config.clip_coef})"
            )
    for name in ("update_epochs", "minibatch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.batch_size is not None and config.minibatch_size > config.batch_size:
        raise ValueError(
            f"minibatch_size ({config.minibatch_size}) is larger than the batch "
            f"(batch_size = {config.batch_size})"
        )
    check_positive("vf_clip_coef", config.vf_clip_coef)
    check_positive("vf_coef", config.vf_coef, allow_zero=True)
    check_positive("ent_coef", config.ent_coef, allow_zero=True)
    check_positive("ref_kl_coef", config.ref_kl_coef, allow_zero=True)
    if config.max_grad_norm is not None:
        check_positive("max_grad_norm", config.max_grad_norm)
    if config.target_kl is not None:
        check_positive("target_kl", config.target_kl)
    if config.loss_reduction == "constant":
        if config.loss_constant is None:
            raise ValueError("loss_constant must be set when loss_reduction is 'constant'")
        check_positive("loss_constant", config.loss_constant)


def one_per_step(actions: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """`actions` seen with one entry per step: a continuous action is a vector, (N, A) for
    log-probs (N,), whose trailing dimensions belong to the action itself."""
    if actions.dim() <= logprobs.dim():
        return actions
    return actions.flatten(logprobs.dim())[..., 0]


def check_batch(batch: dict[str, torch.Tensor], config: PPOConfig, kl_controller: KLController | None) -> None:
    """Raise ValueError naming what is wrong with a batch `ppo_update` cannot train on."""
    if config.objective.endswith("kl_penalty") and kl_controller is None:
        raise ValueError(f"objective {config.objective!r} needs a kl_controller (TR-3/TR-4)")
    missing = [k for k in REQUIRED_BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; required keys are {list(REQUIRED_BATCH_KEYS)}")
    if config.ref_kl_coef > 0 and "ref_logprobs" not in batch:
        raise ValueError("ref_kl_coef > 0 needs batch['ref_logprobs'] (log π_ref of the actions)")
    actions = batch["actions"]
    per_action = ("logprobs", "advantages", "returns", "values", "mask", "ref_logprobs")
    shaped = {k: batch[k] for k in per_action if k in batch}
    check_same_shape("actions", one_per_step(actions, batch["logprobs"]), **shaped)
    check_finite(**{k: v for k, v in shaped.items() if k != "mask"})
    n_rows = actions.shape[0]
    for key, tensor in batch.items():
        if tensor.shape[0] != n_rows:
            raise ValueError(f"batch['{key}'] has {tensor.shape[0]} rows but batch['actions'] has {n_rows}")
    if config.minibatch_size > n_rows:
        raise ValueError(f"minibatch_size ({config.minibatch_size}) is larger than the batch ({n_rows} rows)")


def check_evaluation(new: Evaluation, minibatch: dict[str, torch.Tensor]) -> None:
    """Raise ValueError if what `evaluate(minibatch)` returned is not shaped like the minibatch's actions."""
    check_same_shape("minibatch actions", one_per_step(minibatch["actions"], minibatch["logprobs"]), **{
        "evaluate(...).logprobs": new.logprobs, "evaluate(...).entropy": new.entropy,
        "evaluate(...).values": new.values,
    })
