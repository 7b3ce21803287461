"""KL divergence: the exact categorical KL, the k1/k2/k3 estimators, and β controllers.

Sources: notes 000 (RLHF objective: the penalty term), 002 (PPO paper notes: adaptive β), 004
(PG to GRPO: k1/k2/k3, "PPO uses k1, GRPO uses k3"); John Schulman, "Approximating KL
Divergence" (2020); Schulman et al. 2017, §4; Ziegler et al. 2019 (the proportional controller
of RLHF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F

from core.catalog import implements
from core.checks import check_positive, check_same_shape

__all__ = [
    "categorical_kl",
    "kl_estimate",
    "kl_regularized_objective",
    "kl_regularized_optimum",
    "KL_ESTIMATORS",
    "KLEstimator",
    "KL_CONTROLLERS",
    "KLControllerKind",
    "KLController",
    "FixedKLController",
    "AdaptiveKLController",
    "ProportionalKLController",
    "make_kl_controller",
]


@implements("KL-1")
def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Exact KL[q‖p] = Σ_x q(x) (log q(x) − log p(x)) for categoricals given by logits   (KL-1).

    Notes 000 and 002 write the penalty as D_KL[π_θ‖π_ref]; the PPO paper's penalty is
    KL[π_old‖π_θ]. The order matters: KL is not symmetric.

    Symbols → arguments: q → `logits_q` (..., K), p → `logits_p` (..., K). Returns (...).
    """
    check_same_shape("logits_q", logits_q, logits_p=logits_p)
    logq = F.log_softmax(logits_q, dim=-1)
    logp = F.log_softmax(logits_p, dim=-1)
    return (logq.exp() * (logq - logp)).sum(dim=-1)


@implements("PG-1", "RM-4")
def kl_regularized_objective(
    logits: torch.Tensor, ref_logits: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """E_{y∼π(·|x)}[r(x, y)] − β KL[π(·|x) ‖ π_ref(·|x)], exactly, for each prompt x   (RM-2's objective).

    The RLHF objective of notes 000 and 001 (PPO for LLMs), for a policy small enough to enumerate its replies.
    Averaging the result over prompts x ∼ D gives J (PG-1; D is the prompt distribution, not a
    divergence: erratum E1). With β = 0 it is the reward alone and so is its gradient (RM-4).

    Symbols → arguments: π → `logits` (..., Y), π_ref → `ref_logits` (..., Y), r(x, ·) →
    `rewards` (..., Y), β → `beta`. Returns (...).
    """
    expected_reward = (F.softmax(logits, dim=-1) * rewards).sum(dim=-1)
    return expected_reward - beta * categorical_kl(logits, ref_logits)


@implements("RM-2")
def kl_regularized_optimum(ref_logits: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """Log-probabilities of π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x)   (RM-2; notes 000, 001).

    The maximiser of `kl_regularized_objective`: the reward moves the policy away from π_ref,
    and β sets how far (erratum E2: π_ref anchors, it does not judge). Its value there is
    β log Z(x). DPO (DP-1) inverts this relation to read a reward off a policy. β → 0 gives the
    greedy policy, β → ∞ gives π_ref. Shapes as in `kl_regularized_objective`; returns (..., Y).
    """
    check_positive("beta", beta)
    return F.log_softmax(F.log_softmax(ref_logits, dim=-1) + rewards / beta, dim=-1)


KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS = get_args(KLEstimator)
KLControllerKind = Literal["fixed", "adaptive", "proportional"]
KL_CONTROLLERS = get_args(KLControllerKind)


@implements("KL-2", "KL-3")
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-sample estimates of KL[q‖p] from x ∼ q   (KL-2; note 004; Schulman 2020).

    With log r = log p(x) − log q(x):
        k1 = −log r                unbiased; high variance; negative for about half the samples
        k2 = ½ (log r)²            biased (exact only to second order); low variance; ≥ 0
        k3 = (r − 1) − log r       unbiased; low variance; ≥ 0 (r − 1 is a zero-mean control variate)
    Note 004 calls k1 biased (erratum E8): it is unbiased, its variance and sign are what hurt.

    As a *loss* on samples from q = π_θ, differentiated through log q (KL-3):
        E[∇k1] = 0 (the score function has zero mean: k1 as a loss does nothing on average),
        E[∇k2] = ∇ KL[q‖p]     (the reverse KL the notes write),
        E[∇k3] = ∇ KL[p‖q]     (the forward KL, what GRPO's k3 term actually follows).
    That is why PPO-RLHF puts k1 in the *reward* (r_t = −β k1, a number, no gradient), while
    GRPO puts k3 in the *loss*.

    Symbols → arguments: log q(x) → `logprobs` (the sampling policy, π_θ in RLHF), log p(x) →
    `ref_logprobs` (π_ref), `estimator` ∈ {"k1", "k2", "k3"}. Shapes: equal; returns the same.
    """
    check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}: expected one of {KL_ESTIMATORS}")


class KLController(Protocol):
    """One interface for every β schedule: read `.beta`, then `update(measured_kl, n_steps)`."""

    beta: float

    def update(self, measured_kl: float, n_steps: int) -> float: ...


@dataclass
class FixedKLController:
    """β never changes."""

    beta: float

    def __post_init__(self) -> None:
        check_positive("beta", self.beta, allow_zero=True)

    def update(self, measured_kl: float, n_steps: int) -> float:
        return self.beta


@dataclass(kw_only=True)
class _Schedule:
    """When a β controller acts, and how far β may go: what TR-3 and TR-4 share.

    - bound: β stays in [β₀/bound, β₀·bound], β₀ the initial β. An unbounded schedule can halve β
      to nothing while the KL is still growing slowly, and then cannot raise it back in time.
    - warm-up: β is held at β₀ until the measured KL first reaches the low edge of the
      controller's band (`band()[0]`) or for `warmup` calls at most. The KL to a reference starts
      at exactly 0, and a controller fed that 0 would only lower β while the policy is on its way.
    - every: after the warm-up, β changes on every `every`-th call, from the KL of that call and
      the samples n of all the calls since the last change (the KL answers a new β over several
      updates; changing it on every call makes TR-3 overshoot both ways).

    `update(measured_kl, n_steps)` is called once per rollout; it applies the rule of the
    controller (`_rule`) only when the schedule says so, and returns the β to use next.
    """

    bound: float | None = 100.0
    warmup: int = 0
    every: int = 1
    initial: float = field(init=False, default=0.0)
    started: bool = field(init=False, default=False)
    _calls: int = field(init=False, default=0, repr=False)
    _since: int = field(init=False, default=0, repr=False)
    _n: int = field(init=False, default=0, repr=False)

    def _check_schedule(self) -> None:
        check_positive("beta", self.beta)
        check_positive("target", self.target)
        if self.bound is not None and not self.bound >= 1.0:
            raise ValueError(f"bound must be ≥ 1 (β stays in [β₀/bound, β₀·bound]), got {self.bound!r}")
        if self.warmup < 0 or self.every < 1:
            raise ValueError(f"warmup must be ≥ 0 and every ≥ 1, got {self.warmup!r} and {self.every!r}")
        self.initial = float(self.beta)

    def limits(self) -> tuple[float, float]:
        """(β_min, β_max) = (β₀/bound, β₀·bound); (0, ∞) without a bound."""
        if self.bound is None:
            return 0.0, math.inf
        return self.initial / self.bound, self.initial * self.bound

    def band(self) -> tuple[float, float]:  # pragma: no cover - each controller has its own
        raise NotImplementedError

    def update(self, measured_kl: float, n_steps: int = 1) -> float:
        self._calls += 1
        if not self.started:
            self.started = measured_kl >= self.band()[0] or self._calls >= self.warmup
            if not self.started:
                return self.beta
        self._since += 1
        self._n += n_steps
        if self._since >= self.every:
            low, high = self.limits()
            self.beta = min(max(self._rule(measured_kl, self._n), low), high)
            self._since = self._n = 0
        return self.beta


@implements("TR-3")
@dataclass
class AdaptiveKLController(_Schedule):
    """The PPO paper's adaptive β   (TR-3; note 002, note 000's last paragraph; PPO §4).

        d = measured KL;  d < d_targ / 1.5 ⇒ β ← β / 2;  d > 1.5 · d_targ ⇒ β ← 2β;  else keep β.

    The controller raises β when the policy moved too far and leaves the learning rate alone
    (note 000 says the learning rate shrinks: erratum E3). 1.5 and 2 are the paper's choices;
    it reports the algorithm is not sensitive to them. The band [d_targ/1.5, 1.5·d_targ] is where
    β is kept; its low edge ends the warm-up. β changes by at most the factor 2 per update and
    stays in [β₀/bound, β₀·bound] (`_Schedule`: bound, warmup, every; the defaults, bound 100,
    no warm-up and every call, are the paper's rule with a wide safety net).

    Symbols → fields: β → `beta`, d_targ → `target`, 1.5 → `tolerance`, 2 → `factor`.
    `n_steps` is accepted for the common interface and ignored by the rule.
    """

    beta: float
    target: float
    tolerance: float = 1.5
    factor: float = 2.0

    def __post_init__(self) -> None:
        self._check_schedule()
        if self.tolerance <= 1.0:
            raise ValueError(f"tolerance must be > 1, got {self.tolerance!r}")
        if self.factor <= 1.0:
            raise ValueError(f"factor must be > 1, got {self.factor!r}")

    def band(self) -> tuple[float, float]:
        """The KL range in which β is kept: [d_targ/1.5, 1.5·d_targ]."""
        return self.target / self.tolerance, self.target * self.tolerance

    def _rule(self, measured_kl: float, n_steps: int) -> float:
        if measured_kl < self.target / self.tolerance:
            return self.beta / self.factor
        if measured_kl > self.target * self.tolerance:
            return self.beta * self.factor
        return self.beta


@implements("TR-4")
@dataclass
class ProportionalKLController(_Schedule):
    """Proportional β controller of RLHF   (TR-4; Ziegler et al. 2019, eq. 2).

        e = clip(d / d_targ − 1, −0.2, 0.2);   β ← β (1 + e · n / H)

    A smooth version of TR-3: β moves in proportion to the relative KL error, at most 20% of
    n/H per update, where n is the number of samples (steps, replies) since the last update and
    H the horizon over which the error is corrected. n/H is capped at 1, so one update changes β
    by at most ±20% (and β stays positive); β stays in [β₀/bound, β₀·bound] (`_Schedule`). The
    band [0.8·d_targ, 1.2·d_targ] is where the error is not clipped; its low edge ends the warm-up.

    Symbols → fields: β → `beta`, d_targ → `target`, H → `horizon`; n → `n_steps` of update
    (summed over the calls since the last update when `every` > 1).
    """

    beta: float
    target: float
    horizon: float = 10_000.0

    def __post_init__(self) -> None:
        self._check_schedule()
        check_positive("horizon", self.horizon)

    def band(self) -> tuple[float, float]:
        """The KL range in which the error d/d_targ − 1 is not clipped: [0.8·d_targ, 1.2·d_targ]."""
        return 0.8 * self.target, 1.2 * self.target

    def _rule(self, measured_kl: float, n_steps: int) -> float:
        error = min(max(measured_kl / self.target - 1.0, -0.2), 0.2)
        return self.beta * (1.0 + error * min(n_steps / self.horizon, 1.0))


def make_kl_controller(
    kind: KLControllerKind,
    beta: float,
    target: float | None = None,
    horizon: float | None = None,
    *,
    bound: float | None = 100.0,
    warmup: int = 0,
    every: int = 1,
) -> KLController:
    """Build a controller by name: "fixed", "adaptive" (TR-3) or "proportional" (TR-4).

    `beta` is the initial β, `target` the d_targ the controller steers the measured KL to (not
    needed by "fixed"), `horizon` the H of the proportional controller (None: its default). Which KL it measures is
    the caller's: KL[π_old‖π_θ] for PPO's penalty objective (config fields `kl_coef`,
    `kl_controller`, `kl_controller_target`), KL[π_θ‖π_ref] for RLHF (`ref_kl_coef`,
    `ref_kl_controller`, `ref_kl_controller_target`). `bound`, `warmup`, `every`: when the
    controller acts and how far β may go (`_Schedule`; unused by "fixed")."""
    if kind == "fixed":
        return FixedKLController(beta)
    if target is None:
        raise ValueError(f"the {kind!r} KL controller needs target")
    if kind == "adaptive":
        return AdaptiveKLController(beta, target, bound=bound, warmup=warmup, every=every)
    if kind == "proportional":
        horizon_arg = {} if horizon is None else {"horizon": horizon}
        return ProportionalKLController(beta, target, **horizon_arg, bound=bound, warmup=warmup, every=every)
    raise ValueError(f"unknown KL controller {kind!r}: expected 'fixed', 'adaptive' or 'proportional'")
