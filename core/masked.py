"""Reductions over padded token batches: masked sums, means, variances, whitening, and the loss
reductions of the GRPO family (GR-2, DA-3, DR-1).

`mask` has the shape of `x` (1 = real token, 0 = padding); with no mask every position is real.
A game step is one action: on the game's (N,) steps every reduction is the plain mean.
Sources: note 004 (PG to GRPO); Shao et al. 2024 (GRPO); Yu et al. 2025 (DAPO); Liu et al. 2025
(Dr. GRPO).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from core.catalog import implements
from core.checks import check_same_shape

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "reduce_loss", "LOSS_REDUCTIONS",
           "LossReduction"]

def masked_sum(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Σ x·mask over `dim` (all dims when None)."""
    if mask is None:
        return x.sum() if dim is None else x.sum(dim=dim)
    check_same_shape("x", x, mask=mask)
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Mean of x over the positions where `mask` is 1 (over `dim`, or all dims when None).

    A row with no real position gives 0, not NaN.
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased variance of x over the positions where `mask` is 1 (a scalar)."""
    if mask is None:
        return x.var() if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    mean = masked_mean(x, mask)
    count = mask.to(x.dtype).sum()
    return masked_sum((x - mean) ** 2, mask) / (count - 1).clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − mean) / std over the masked positions (advantage normalisation, reward whitening).

    With `shift_mean=False` only the scale changes (used for rewards, whose sign matters).
    Padding positions come back as 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else whitened * mask.to(x.dtype)


LossReduction = Literal["token_mean", "seq_mean", "constant", "minibatch_token_mean"]


LOSS_REDUCTIONS = get_args(LossReduction)


@implements("GR-2", "DA-3", "DR-1", "GR-3")
def reduce_loss(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loss_reduction: str = "token_mean",
    loss_constant: float | None = None,
    n_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar; the choices of the GRPO family.

        "seq_mean"   (GRPO, GR-2):     (1/B) Σ_i (1/|o_i|) Σ_t x_{i,t}
        "token_mean" (DAPO, DA-3):     (1/N_tok) Σ_i Σ_t x_{i,t},   N_tok = `n_tokens`, by default Σ_i |o_i|
        "constant"   (Dr. GRPO, DR-1): (1/(B·C)) Σ_i Σ_t x_{i,t},   C = `loss_constant` (e.g. max length)
        "minibatch_token_mean":        (1/Σ_i |o_i|) Σ_i Σ_t x_{i,t} of this tensor, always

    |o_i| is the number of real tokens of reply i (Σ_t mask). Under "seq_mean" each token of a
    long reply weighs 1/|o_i|, less than a token of a short reply: a long wrong answer is
    penalised less per token, the length bias of GR-3. "token_mean" weighs every token the same
    in a batch; "constant" also makes the weight independent of the batch's lengths.

    DAPO's token mean is over every token of the *sampled batch*. When the batch is trained in
    minibatches, one optimiser step each (`core.ppo.ppo_update`), the caller passes `n_tokens` =
    the batch's token count / the number of minibatches: each minibatch's sum is then its share
    of the batch's token mean, a minibatch of long replies weighs more than one of short replies,
    and the minibatch losses add up (over an epoch, ÷ the number of minibatches) to the token mean
    of the whole batch — what DAPO's reference and other libraries compute. Dividing each
    minibatch by its own token count instead is "minibatch_token_mean": every minibatch weighs the
    same whatever its tokens, so a token of a minibatch of short replies weighs more; the two
    agree when the batch is one minibatch or every minibatch holds as many tokens.

    Shapes: `x` (B, T) or (N,); `mask` like `x` or None (all real). Without a mask and for 1-D
    `x` every mode is the plain mean (each "reply" is one action), unless "token_mean" is given
    `n_tokens`.
    """
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction (the loss reduction mode) must be one of {LOSS_REDUCTIONS}, "
                         f"got {loss_reduction!r}")
    if loss_reduction == "token_mean" and n_tokens is not None:
        if float(n_tokens) <= 0:
            raise ValueError(f"n_tokens must be > 0, got {float(n_tokens)!r}")
        real = x if mask is None else x * mask.to(x.dtype)
        if mask is not None:
            check_same_shape("x", x, mask=mask)
        return real.sum() / n_tokens
    if mask is None and (loss_reduction != "constant" or x.dim() < 2):
        return x.mean()  # every position is real: all modes but "constant" reduce to the plain mean
    if mask is None:
        mask = torch.ones_like(x)
    check_same_shape("x", x, mask=mask)
    mask = mask.to(x.dtype)
    if loss_reduction in ("token_mean", "minibatch_token_mean") or x.dim() < 2:
        return masked_mean(x, mask)
    if loss_reduction == "seq_mean":
        lengths = mask.sum(dim=-1).clamp(min=1.0)  # (B,)
        return ((x * mask).sum(dim=-1) / lengths).mean()
    if loss_constant is None or loss_constant <= 0:
        raise ValueError(f"loss reduction 'constant' needs a positive constant (loss_constant), got {loss_constant!r}")
    n_rows = x.reshape(-1, x.shape[-1]).shape[0]
    return (x * mask).sum() / (n_rows * loss_constant)
