"""The PPO update: one function shared by the game agent and the language-model pipeline.

A step in a game and a token in a reply are both "an action with a log-prob, an advantage and
a mask", so one loop serves both:

    ppo_update:  for epoch in 1..K:                              (PPO paper, Algorithm 1)
                     for each shuffled minibatch of rows:
                         new log π, entropy, V ← evaluate(minibatch)
                         loss ← ppo_loss(...)
                         backward; average over ranks; clip the global grad norm; optimiser step
                     stop early if the epoch's mean KL passed the target
    ppo_loss:    Â ← normalise per minibatch (optional)
                 objective ← ρÂ (IS-1) or clip(ρ)Â (CL-1/DA-1), minus β·KL[π_old‖π_θ] (TR-2)
                 loss = −reduce(objective) + c₁·reduce(value loss) − c₂·reduce(entropy)   (CL-4)
                        [+ β_ref·reduce(k-estimate of KL to π_ref), GRPO's in-loss KL (GR-2)]

`ppo_loss` is a pure function; torchrun enters `ppo_update` only through its `ranks` argument.
Validation is in `core.checks`, the debug metrics in `core.diagnostics`. Sources: notes
001 (PPO for LLMs), 002 (PPO paper notes), 003 (PPO derived), 004 (PG to GRPO);
Schulman et al. 2017 (PPO); Huang et al. 2022, "The 37 Implementation Details of PPO" (details
5–13: shuffled minibatches, advantage normalisation, clipping of ratio, value and gradient norm,
entropy bonus, debug metrics, early stop at a target KL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Literal, NamedTuple, Protocol, get_args

import torch

from core.catalog import implements
from core.checks import REQUIRED_BATCH_KEYS, check_batch, check_evaluation, check_ppo_config
from core.config import check_choices
from core.diagnostics import approx_kl, clip_fraction, explained_variance
from core.kl import KLController, KLEstimator, kl_estimate
from core.losses import clipped_surrogate, ratio_surrogate, value_loss
from core.masked import LossReduction, masked_whiten, reduce_loss

__all__ = ["PPOConfig", "Evaluation", "Ranks", "ppo_loss", "ppo_update", "OBJECTIVES", "REQUIRED_BATCH_KEYS"]

Objective = Literal["clip", "kl_penalty", "clip+kl_penalty", "ratio"]
OBJECTIVES = get_args(Objective)


@dataclass
class PPOConfig:
    """Hyperparameters of one PPO update (validated at construction; errors name the field)."""

    clip_coef: float = 0.2
    """ε (ε_low): the ratio is clipped to [1 − ε, 1 + ε_high] (CL-1)."""
    clip_coef_high: float | None = None
    """ε_high for DAPO's clip-higher (DA-1); None means the same as `clip_coef`."""
    objective: Objective = "clip"
    """'clip' (CL-1), 'kl_penalty' (TR-2, needs a KL controller), 'clip+kl_penalty', or 'ratio': the plain
    ρA of IS-1 with no trust region at all (the "no clipping or penalty" row of the PPO paper's Table 1)."""
    update_epochs: int = 4
    """K: passes over the batch per update."""
    minibatch_size: int = 256
    """Rows per minibatch (a row is one step, or one reply of (T,) tokens)."""
    batch_size: int | None = None
    """Rows per batch if known in advance (then checked against `minibatch_size` here)."""
    norm_adv: bool = True
    """Normalise advantages to zero mean, unit std in each minibatch (detail 7)."""
    clip_vloss: bool = True
    """Clip the value loss around the old values (detail 9)."""
    vf_clip_coef: float = 0.2
    """ε_v: how far the value may move from the old value before its loss is clipped."""
    vf_coef: float = 0.5
    """c₁: weight of the value loss (CL-4). 0 with no critic (GRPO)."""
    ent_coef: float = 0.0
    """c₂: weight of the entropy bonus (CL-4)."""
    max_grad_norm: float | None = 0.5
    """Global gradient-norm clip (detail 11); None disables it."""
    target_kl: float | None = None
    """Stop the epochs early once the mean approx_kl of an epoch passes this; None never stops."""
    loss_reduction: LossReduction = "token_mean"
    """How per-token terms become a scalar: 'token_mean' (DA-3: over the tokens of the whole batch,
    each minibatch its share), 'seq_mean' (GR-2), 'constant' (DR-1), or 'minibatch_token_mean'
    (each minibatch over its own tokens; `core.masked.reduce_loss`)."""
    loss_constant: float | None = None
    """C of the 'constant' reduction (for example the generation budget in tokens)."""
    ref_kl_coef: float = 0.0
    """β_ref of an in-loss KL to a reference policy (GRPO's −β·k3 term, GR-2); needs batch['ref_logprobs']."""
    ref_kl_estimator: KLEstimator = "k3"
    """Which estimator (KL-2) the in-loss KL uses: 'k1', 'k2' or 'k3'."""

    def __post_init__(self) -> None:
        check_choices(self)
        check_ppo_config(self)


class Evaluation(NamedTuple):
    """What `evaluate(minibatch)` returns, each shaped like `minibatch["actions"]`."""

    logprobs: torch.Tensor
    """log π_θ(a|s) of the stored actions under the current parameters."""
    entropy: torch.Tensor
    """H[π_θ(·|s)] at each state (or token position)."""
    values: torch.Tensor | None
    """V_ψ(s); None when there is no critic (vf_coef = 0)."""


class Ranks(Protocol):
    """The processes that train together (`core.distributed.ranks()` under torchrun).

    `average_gradients(params)` replaces each `.grad` by its mean over the ranks; `mean(stats)`
    gives each value's mean over the ranks, the same dict on every rank. `None` in `ppo_update`
    means one process: both are no-ops.
    """

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None: ...

    def mean(self, stats: dict[str, float]) -> dict[str, float]: ...


class _OneProcess:
    """`Ranks` of a run with one process: nothing to average."""

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        pass

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        return stats


# The terms `ppo_update` averages over its minibatches, in the order of the metrics it returns.
LOSS_TERMS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "ref_kl", "grad_norm")


@implements("CL-4")
def ppo_loss(
    new: Evaluation,
    minibatch: dict[str, torch.Tensor],
    config: PPOConfig,
    *,
    beta: float = 0.0,
    n_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of one minibatch, and its terms   (CL-4; notes 001, 003; PPO paper eq. 9).

        L = −reduce(objective) + c₁·reduce(L^V) − c₂·reduce(H) [+ β_ref·reduce(KL̂[π_θ‖π_ref])]
        objective = ρÂ (IS-1, 'ratio', 'kl_penalty') or min(ρÂ, clip(ρ, 1 − ε, 1 + ε_high)Â)
                    (CL-1/DA-1, 'clip', 'clip+kl_penalty'), minus β·k3[π_old‖π_θ] with a penalty (TR-2)

    Â is whitened per minibatch with `norm_adv` (detail 7); L^V is the (clipped) value loss
    (AD-7, detail 9); the KL to π_old is the k3 estimate on actions drawn from π_old,
    differentiable in θ (KL-2); the KL to π_ref (GR-2) uses `ref_kl_estimator`. Each term is
    reduced by `config.loss_reduction` (`core.masked.reduce_loss`).

    Symbols → arguments: log π_θ, H, V_ψ → `new` (what `evaluate(minibatch)` returned); log π_old,
    Â, V^targ, V_old, mask, log π_ref → `minibatch["logprobs"]`, `["advantages"]`, `["returns"]`,
    `["values"]`, `["mask"]` (optional), `["ref_logprobs"]` (for `ref_kl_coef`); ε, ε_high, ε_v,
    c₁, c₂, β_ref → `config`; β → `beta`; the token count a "token_mean" minibatch divides by →
    `n_tokens`. Shapes: as in `ppo_update`'s `batch`, (B,) or (B, T).

    Returns the scalar loss and its detached terms: policy_loss, value_loss (with a critic),
    entropy, approx_kl, clipfrac, ref_kl (with `ref_kl_coef`).
    """
    old, mask = minibatch["logprobs"], minibatch.get("mask")
    check_evaluation(new, minibatch)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return reduce_loss(x, mask, loss_reduction=config.loss_reduction, loss_constant=config.loss_constant,
                           n_tokens=n_tokens)

    advantages = masked_whiten(minibatch["advantages"], mask) if config.norm_adv else minibatch["advantages"]
    if config.objective in ("clip", "clip+kl_penalty"):
        objective = clipped_surrogate(new.logprobs, old, advantages, clip_coef=config.clip_coef,
                                      clip_coef_high=config.clip_coef_high)
    else:  # "ratio" and "kl_penalty": no clipping
        objective = ratio_surrogate(new.logprobs, old, advantages)
    if config.objective.endswith("kl_penalty"):
        objective = objective - beta * kl_estimate(old, new.logprobs, "k3")  # TR-2: KL[π_old‖π_θ]
    policy_loss = -reduce(objective)
    terms = {"policy_loss": policy_loss}
    loss = policy_loss
    if config.ref_kl_coef > 0:
        terms["ref_kl"] = reduce(kl_estimate(new.logprobs, minibatch["ref_logprobs"], config.ref_kl_estimator))
        loss = loss + config.ref_kl_coef * terms["ref_kl"]
    if new.values is not None and config.vf_coef > 0:
        terms["value_loss"] = reduce(value_loss(new.values, minibatch["returns"], minibatch["values"],
                                                vf_clip_coef=config.vf_clip_coef if config.clip_vloss else None))
        loss = loss + config.vf_coef * terms["value_loss"]
    terms["entropy"] = reduce(new.entropy)
    loss = loss - config.ent_coef * terms["entropy"]
    terms = {name: value.detach() for name, value in terms.items()}
    terms["approx_kl"] = approx_kl(new.logprobs, old, mask)
    terms["clipfrac"] = clip_fraction(new.logprobs, old, config.clip_coef, config.clip_coef_high, mask)
    return loss, terms


@implements("AC-2")
def ppo_update(
    evaluate: Callable[[dict[str, torch.Tensor]], Evaluation],
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    kl_controller: KLController | None = None,
    generator: torch.Generator | None = None,
    ranks: Ranks | None = None,
    compile: bool = False,
) -> dict[str, float]:
    """Run K epochs of minibatch PPO on one batch; return the debug metrics.

    Arguments
    - `evaluate(minibatch) -> Evaluation`: recomputes log π_θ, entropy and V for the stored
      actions. A minibatch is `batch` sliced to a subset of rows (every key, so observations,
      token ids or attention masks travel along).
    - `batch`: tensors sharing the leading dimension N (rows). Required: `actions`, `logprobs`
      (log π_old, from the rollout), `advantages` Â, `returns` V^targ = Â + V_old, `values` V_old;
      all the same shape, (N,) for game steps or (N, T) for token sequences (a continuous action
      is a vector: `actions` (N, A) with the others (N,)). Optional `mask`
      (same shape; 1 = real token) and `ref_logprobs` (for `ref_kl_coef`).
    - `optimizer`: steps every parameter it holds; the gradient norm is clipped over them all.
    - `kl_controller`: supplies β for the `kl_penalty` objective and is updated once at the end
      with the measured KL[π_old‖π_θ] (TR-3/TR-4). Required for that objective.
    - `generator`: the random stream for shuffling (reproducible runs), on the CPU.
    - `ranks`: the processes training together (`Ranks`; `core.distributed.ranks()` under
      torchrun), None for one process.
    - `compile`: run each minibatch's `evaluate` and `ppo_loss`, and so their backward, as one
      `torch.compile`d graph (the same computation up to rounding; compiled at the first call).

    Under torchrun each rank passes its own batch and generator: the gradients are averaged over
    the ranks after each backward pass and before the grad-norm clip, the early stop tests the
    rank-averaged KL, and the returned metrics (and the KL given to the β controller) are means
    over the ranks, so every rank takes the same decisions. Every rank needs the same number of
    minibatches.

    Returns the debug metrics as floats under the names documented in `core.metrics.METRICS`:
    each `losses/…` term averaged over the minibatches, `charts/kl_coef` (with a controller),
    `ppo/epochs` and `ppo/minibatches` (how much of the schedule ran before an early stop).
    """
    ranks = _OneProcess() if ranks is None else ranks
    check_batch(batch, config, kl_controller)
    n_rows, device = batch["actions"].shape[0], batch["actions"].device
    n_minibatches = n_rows // config.minibatch_size  # a remainder smaller than a minibatch is dropped
    beta = float(kl_controller.beta) if kl_controller is not None else 0.0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Sums of the minibatches' terms, kept on the device: one host sync per epoch, not per step.
    totals = {name: torch.zeros((), device=device) for name in LOSS_TERMS}
    epochs = minibatches = 0
    for _epoch in range(config.update_epochs):
        order = torch.randperm(n_rows, generator=generator).to(device)[: n_minibatches * config.minibatch_size]
        n_tokens = _tokens_per_minibatch(batch.get("mask"), order, n_minibatches, config, ranks)
        shuffled = {key: tensor[order] for key, tensor in batch.items()}  # one gather per key an epoch
        epoch_kl = torch.zeros((), device=device)
        epoch_loss = torch.zeros((), device=device)  # checked once an epoch: no host sync per step
        for start in range(0, n_minibatches * config.minibatch_size, config.minibatch_size):
            minibatch = {key: tensor[start : start + config.minibatch_size] for key, tensor in shuffled.items()}
            loss, terms = (_compiled_minibatch_loss() if compile else _minibatch_loss)(
                evaluate, minibatch, config, beta, n_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ranks.average_gradients(params)  # under torchrun: the mean over the ranks
            if config.max_grad_norm is not None:  # detail 11 (foreach: one call for every gradient)
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
            optimizer.step()
            for name, value in terms.items():
                totals[name] += value
            epoch_kl += terms["approx_kl"]
            epoch_loss += loss.detach()
            minibatches += 1
        epochs += 1
        if not torch.isfinite(epoch_loss):
            raise FloatingPointError(f"the PPO loss became {float(epoch_loss)} in epoch {epochs}; "
                                     "check the rewards, the learning rate and the evaluate() outputs")
        # early stopping, on the KL averaged over the ranks so that every rank stops at the same epoch
        if config.target_kl is not None and \
                ranks.mean({"kl": float(epoch_kl) / max(n_minibatches, 1)})["kl"] > config.target_kl:
            break
    stats = _update_metrics(totals, minibatches, epochs, batch, config, ranks)
    if kl_controller is not None:
        stats["charts/kl_coef"] = beta
        if config.objective.endswith("kl_penalty"):
            # TR-3: measure d = E[KL[π_old‖π_θ]] once the update is done, then adapt β for the next.
            kl = _mean_kl_after_update(evaluate, batch, config.minibatch_size)
            stats["ppo/kl_after_update"] = ranks.mean({"kl": kl})["kl"]
            kl_controller.update(stats["ppo/kl_after_update"], n_rows)
    return stats


def _minibatch_loss(evaluate: Callable[[dict[str, torch.Tensor]], Evaluation], minibatch: dict[str, torch.Tensor],
                    config: PPOConfig, beta: float, n_tokens: float | None) -> tuple[torch.Tensor, dict]:
    """`ppo_loss` of the minibatch as `evaluate` sees it now: one function, so that `torch.compile`
    can fuse the network, the loss and (through AOTAutograd) their backward into one graph."""
    return ppo_loss(evaluate(minibatch), minibatch, config, beta=beta, n_tokens=n_tokens)


@cache
def _compiled_minibatch_loss() -> Callable:
    """`_minibatch_loss` under `torch.compile`, made once per process (dynamo compiles at the first
    call and again only when a guard fails, e.g. once for a β that changes, then β is symbolic)."""
    return torch.compile(_minibatch_loss)


def _tokens_per_minibatch(mask: torch.Tensor | None, trained_rows: torch.Tensor, n_minibatches: int,
                          config: PPOConfig, ranks: Ranks) -> float | None:
    """"token_mean" (DA-3) over the batch: each minibatch divides its sum by the tokens of the rows
    this epoch trains on (over all ranks) ÷ the number of minibatches; None for the other reductions."""
    if config.loss_reduction != "token_mean" or mask is None:
        return None
    batch_tokens = ranks.mean({"tokens": float(mask[trained_rows].sum())})["tokens"]
    return max(batch_tokens, 1.0) / n_minibatches


def _update_metrics(totals: dict[str, torch.Tensor], minibatches: int, epochs: int,
                    batch: dict[str, torch.Tensor], config: PPOConfig, ranks: Ranks) -> dict[str, float]:
    """The metrics of `ppo_update`: each term's mean over the minibatches that ran, over the ranks."""
    stats = {f"losses/{name}": float(total) / max(minibatches, 1) for name, total in totals.items()}
    if config.ref_kl_coef == 0:
        del stats["losses/ref_kl"]
    if config.max_grad_norm is None:
        del stats["losses/grad_norm"]
    stats["losses/explained_variance"] = float(explained_variance(batch["values"], batch["returns"],
                                                                  batch.get("mask")))
    stats["ppo/epochs"] = float(epochs)
    stats["ppo/minibatches"] = float(minibatches)
    return ranks.mean(stats)  # under torchrun: the mean over the ranks, the same on each


@torch.no_grad()
def _mean_kl_after_update(
    evaluate: Callable[[dict[str, torch.Tensor]], Evaluation],
    batch: dict[str, torch.Tensor],
    chunk_rows: int,
) -> float:
    """Mean k3 estimate of KL[π_old‖π_θ] over the whole batch with the updated parameters."""
    n_rows = batch["actions"].shape[0]
    total = torch.zeros((), device=batch["actions"].device)
    count = torch.zeros((), device=batch["actions"].device)
    for start in range(0, n_rows, chunk_rows):
        chunk = {key: tensor[start : start + chunk_rows] for key, tensor in batch.items()}
        new = evaluate(chunk)
        weights = chunk.get("mask", torch.ones_like(new.logprobs)).to(new.logprobs.dtype)
        total += (kl_estimate(chunk["logprobs"], new.logprobs, "k3") * weights).sum()
        count += weights.sum()
    return float(total / count.clamp(min=1.0))
