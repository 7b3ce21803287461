"""The optimiser of every stage, and the learning-rate schedule of the supervised ones.

    adamw(params, lr, weight_decay=0.0, eps=1e-6)   AdamW with β₁ = 0.9, β₂ = 0.95
    lr_at(step, total, peak)                         linear warm-up, then cosine decay to 10%
    set_lr(optimizer, lr)                            the learning rate of every parameter group

β₂ = 0.95, as nanoGPT (PyTorch's default is 0.999). ε = 1e-6 for the RL stages (PPO-RLHF, the
group methods, lesson 11); SFT, the reward model and the direct preference methods pass PyTorch's
1e-8. These are the values every measured run of llm/README.md used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["ADAM_BETAS", "adamw", "lr_at", "set_lr"]

ADAM_BETAS = (0.9, 0.95)


def adamw(params: Iterable, lr: float, *, weight_decay: float = 0.0, eps: float = 1e-6) -> torch.optim.AdamW:
    """`torch.optim.AdamW(params, lr, betas=(0.9, 0.95), eps, weight_decay)`. `params`: tensors, or
    parameter groups (dicts) of which those without their own "lr" take `lr`."""
    return torch.optim.AdamW(params, lr=lr, betas=ADAM_BETAS, eps=eps, weight_decay=weight_decay)


def lr_at(step: int, total: int, peak: float, warmup: int = 20, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor`·peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of `optimizer` to `lr` (a schedule's step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
