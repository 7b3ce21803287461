"""TRPO's pieces: conjugate gradient, Fisher-vector products, and a KL-bounded line search.

TRPO (TR-1; notes 002 (PPO paper notes), 004 (PG to GRPO); Schulman et al. 2015) maximises
the surrogate E[ρ A] subject to E[KL[π_old, π_θ]] ≤ δ. To second order the constraint is
½ Δθᵀ F Δθ ≤ δ with F the Fisher matrix (the Hessian of the KL at θ_old), and the best step is
along s = F⁻¹ g:

    s = F⁻¹ g                 (conjugate gradient, using only products F·v, never F itself)
    Δθ = √(2δ / sᵀ F s) · s   (the largest step the quadratic model of the KL allows)
    shrink Δθ by ½ until the true KL ≤ δ and the surrogate improves   (backtracking)

PPO replaced all of this with the clipped objective (CL-1) and first-order SGD; the lesson on
TRPO shows why that is so much simpler. These functions work on any `torch.nn.Module`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from core.catalog import implements
from core.checks import check_positive

__all__ = ["conjugate_gradient", "fisher_vector_product", "backtracking_line_search", "trpo_step"]


@implements("TR-1")
def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    iterations: int = 10,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """Solve F x = b for a symmetric positive-definite F given only `matvec(v) = F v`.

    Exact after at most n iterations for an n×n system (in exact arithmetic); TRPO uses ~10.
    Shapes: `b` (n,); returns x (n,).
    """
    x = torch.zeros_like(b)
    residual = b.clone()  # r = b − F x with x = 0
    direction = b.clone()
    residual_sq = residual @ residual
    for _ in range(iterations):
        if residual_sq <= tolerance:
            break
        f_direction = matvec(direction)
        step = residual_sq / (direction @ f_direction)
        x += step * direction
        residual -= step * f_direction
        new_residual_sq = residual @ residual
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


@implements("TR-1")
def fisher_vector_product(
    kl_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    vector: torch.Tensor,
    *,
    damping: float = 0.0,
) -> torch.Tensor:
    """F v, F = ∇²_θ KL[π_old‖π_θ] at θ = θ_old, by two backward passes (Pearlmutter's trick).

    `kl_fn()` must return the mean KL with π_old detached, so that its gradient is zero and its
    Hessian is the Fisher matrix at θ_old. `damping` adds λv (F + λI keeps CG stable).
    Shapes: `vector` (n,) with n the number of parameters; returns (n,).
    """
    kl = kl_fn()
    grads = torch.autograd.grad(kl, params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])  # (n,)
    grad_dot_v = flat_grad @ vector
    hvp = torch.autograd.grad(grad_dot_v, params)
    return torch.cat([h.reshape(-1) for h in hvp]).detach() + damping * vector


@implements("TR-1")
def backtracking_line_search(
    params: Sequence[torch.Tensor],
    full_step: torch.Tensor,
    surrogate_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    *,
    max_kl: float,
    max_backtracks: int = 10,
    shrink: float = 0.5,
) -> tuple[bool, float]:
    """Try θ_old + shrink^j · Δθ for j = 0, 1, …; keep the first that raises the surrogate
    and keeps KL ≤ `max_kl`. Restores θ_old when none does.

    Returns (accepted, fraction of the full step taken). The parameters are changed in place.
    """
    check_positive("max_kl", max_kl)
    old = parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        baseline = float(surrogate_fn())
        fraction = 1.0
        for _ in range(max_backtracks):
            vector_to_parameters(old + fraction * full_step, params)
            if float(surrogate_fn()) > baseline and float(kl_fn()) <= max_kl:
                return True, fraction
            fraction *= shrink
        vector_to_parameters(old, params)
    return False, 0.0


@implements("TR-1")
def trpo_step(
    params: Sequence[torch.Tensor],
    surrogate_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    *,
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    damping: float = 0.1,
) -> dict[str, float]:
    """One TRPO update of `params` (in place).

    `surrogate_fn()` returns E[ρ A] (to maximise) and `kl_fn()` the mean KL[π_old‖π_θ], both
    recomputed from the current parameters. Returns the diagnostics: the predicted and actual
    KL, the surrogate improvement and the step fraction the line search accepted.
    """
    params = list(params)
    check_positive("max_kl", max_kl)
    surrogate = surrogate_fn()
    grads = torch.autograd.grad(surrogate, params)
    g = torch.cat([x.reshape(-1) for x in grads]).detach()  # (n,)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return fisher_vector_product(kl_fn, params, v, damping=damping)

    direction = conjugate_gradient(fvp, g, iterations=cg_iterations)  # s ≈ F⁻¹ g
    s_f_s = direction @ fvp(direction)
    scale = torch.sqrt(2 * max_kl / s_f_s.clamp(min=1e-12))  # √(2δ / sᵀFs)
    full_step = scale * direction
    before = float(surrogate.detach())
    accepted, fraction = backtracking_line_search(params, full_step, surrogate_fn, kl_fn, max_kl=max_kl)
    with torch.no_grad():
        after = float(surrogate_fn())
        kl_after = float(kl_fn())
    return {
        "accepted": float(accepted),
        "step_fraction": fraction,
        "predicted_kl": float(0.5 * fraction**2 * scale**2 * s_f_s),
        "kl": kl_after,
        "improvement": after - before,
    }
