"""The formula catalog in code: every formula of the notes with its ID.

`FORMULAS` mirrors `FORMULAS.md` (kept beside the notes): ID → statement, the notes it comes
from, and what a test can check. `ERRATA` lists the places where the notes are loose.

Traceability works in three directions:
- `@implements("AD-4", ...)` on a function in `core/` (or a front end) records that the
  function implements those formulas (`IMPLEMENTED`);
- tests carry `@pytest.mark.formula("AD-4")`; `marked_tests()` finds those marks;
- lessons list their IDs (the lessons package reads `FORMULAS` and `marked_tests()`).
`tests/test_catalog.py` fails when a formula implemented in `core/` has no marked test.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["Formula", "FORMULAS", "ERRATA", "IMPLEMENTED", "implements", "marked_tests"]


@dataclass(frozen=True)
class Formula:
    id: str
    statement: str
    notes: str
    check: str


def _f(id: str, statement: str, notes: str, check: str) -> tuple[str, Formula]:
    return id, Formula(id, statement, notes, check)


FORMULAS: dict[str, Formula] = dict(
    [
        # PG — policy gradient
        _f("PG-1", "J(θ) = E_{x∼D} E_{y∼π_θ(·|x)}[r(x,y)]", "000 eq (1)", "D is the prompt distribution (erratum E1)"),
        _f("PG-2", "E[r|θ] = Σ_y r(x,y) π_θ(y|x)", "000 eq (2)", "sampling mean → exact sum"),
        _f("PG-3", "∇_θ π_θ = π_θ ∇_θ log π_θ", "000 eq (4)", "autograd both sides"),
        _f("PG-4", "∇_θ E[r] = E_{y∼π_θ}[r(x,y) ∇_θ log π_θ(y|x)]", "000, 002, 003, 004",
           "exact gradient of PG-2 vs score-function estimate; surrogate E[log π · stopgrad(r)]"),
        _f("PG-5", "Monte Carlo error shrinks as O(1/√N)", "000", "RMSE ratio N vs 4N ≈ 2"),
        _f("PG-6", "E_{y∼π}[b ∇ log π(y)] = 0, so A = r − b keeps the gradient and lowers variance",
           "002, 003, 004", "exact zero by enumeration; variance drops"),
        _f("PG-7", "∇J = E_s E_{a∼π}[∇ log π(a|s) Q(s,a)], J = E_s[V(s)], V(s) = E_a[Q(s,a)]", "003",
           "tiny MDP with exact Q, V"),
        _f("PG-8", "The six choices of Ψ_t (total return, reward-to-go, reward-to-go − baseline, Q, A, "
           "TD residual)", "004 (methods 1–6)", "same expected gradient on a tiny MDP; their variances"),
        # IS / TR — importance sampling and trust regions
        _f("IS-1", "ρ_t = π_θ(a|s)/π_old(a|s); ∇E[ρ_t A_t] at θ = θ_old equals the policy gradient",
           "002, 003", "autograd"),
        _f("IS-2", "log π(y|x) = Σ_t log π(y_t|x, y_<t): a sequence ratio is exp(Σ token log-ratios)",
           "002", "masked sums vs loop"),
        _f("TR-1", "TRPO: max E[ρ A] s.t. E[KL[π_old, π_θ]] ≤ δ; conjugate gradient on Fisher-vector "
           "products, scale √(2δ/sᵀFs), backtracking line search", "002, 004",
           "CG solves Fx = g; accepted step meets KL ≤ δ and improves the surrogate"),
        _f("TR-2", "L^KLPEN = E[ρ A − β KL[π_old(·|s), π_θ(·|s)]]", "002, 004", "value and gradient vs hand"),
        _f("TR-3", "Adaptive β: d = E[KL]; d < d_targ/1.5 ⇒ β ← β/2; d > 1.5·d_targ ⇒ β ← 2β", "002, 000",
           "controller trace; a penalty run keeps KL in band"),
        _f("TR-4", "Proportional controller: e = clip(d/d_targ − 1, −0.2, 0.2); β ← β(1 + e·n/H)",
           "extension of TR-3", "controller trace"),
        # CL — the clipped objective
        _f("CL-1", "L^CLIP = E[min(ρ A, clip(ρ, 1−ε, 1+ε) A)]", "001, 002, 003", "hand cases"),
        _f("CL-2", "Why the min: gradient zero exactly when (A>0, ρ>1+ε) or (A<0, ρ<1−ε); clip alone also "
           "zeroes (A>0, ρ<1−ε) and (A<0, ρ>1+ε)", "003", "autograd over all six cases"),
        _f("CL-3", "L^CLIP ≤ E[ρ A] pointwise, equal to first order at ρ = 1", "003", "property test"),
        _f("CL-4", "Full loss: −L^CLIP + c₁(V_ψ(s) − V^targ)² − c₂ H[π_θ(·|s)], optional value clipping",
           "001, 004", "hand case"),
        # AD — advantages and GAE(λ)
        _f("AD-1", "A(s,a) = Q(s,a) − V(s); RLHF form A(x,y) = r′(x,y) − V_ψ(x)", "003, 001", "tiny MDP"),
        _f("AD-2", "δ_t = R_t + γV(s_{t+1}) − V(s_t); Q^(1)_t = R_t + γV_{t+1}", "003, 004", "hand case"),
        _f("AD-3", "A^(k)_t = Σ_{i<k} γ^i R_{t+i} + γ^k V_{t+k} − V_t = Σ_{l<k} γ^l δ_{t+l}", "003",
           "both forms agree"),
        _f("AD-4", "GAE: Â_t = (1−λ) Σ_{i≥1} λ^{i−1} A^(i)_t = Σ_{l≥0} (γλ)^l δ_{t+l}", "003, 004",
           "weighted sum vs backward recursion vs loop; λ = 0 and λ = 1 limits"),
        _f("AD-5", "Episode boundaries: Â_t = δ_t + γλ(1 − done) Â_{t+1}; bootstrap V at truncation, "
           "not at termination", "implementation of AD-4", "no leak across episodes; truncation bootstraps"),
        _f("AD-6", "Larger k: less bias, more variance", "003", "bias falls and variance grows with k"),
        _f("AD-7", "Critic target V^targ_t = Â_t + V_t (λ-return); critic loss (V_ψ(s_t) − V^targ_t)²",
           "004", "G^λ_t = R_t + γ[(1−λ)V_{t+1} + λG^λ_{t+1}]"),
        # RM — reward model and RLHF with PPO
        _f("RM-1", "Bradley–Terry: P(y⁺ ≻ y⁻) = σ(R(x,y⁺) − R(x,y⁻)); L = −log σ(R(x,y⁺) − R(x,y⁻))",
           "001, 004", "value, gradient, shift invariance, learned accuracy"),
        _f("RM-2", "π* = argmax_π E[r] − β KL[π‖π_ref]; π*(y|x) ∝ π_ref(y|x) exp(r(x,y)/β)", "000, 001",
           "gradient ascent on an enumerable toy reaches the closed form"),
        _f("RM-3", "r′ = R_φ − β KL(π_θ‖π_ref); per token r_t = −β(log π_θ − log π_ref)_t plus R_φ on the "
           "last real (EOS) token", "001, 002, 004", "sum equals sequence term; score lands on EOS"),
        _f("RM-4", "With β = 0 the gradient of (PG-1 − β KL) is the reward-only gradient", "000", "autograd"),
        _f("RM-5", "Value model initialised from the reward model", "004", "weights equal at start"),
        _f("RM-6", "The loop: sample → score with R_φ and KL → A with V_ψ → PPO epochs → new samples",
           "001, 004", "gold reward rises while KL stays bounded"),
        # KL — estimators
        _f("KL-1", "D_KL[q‖p] = E_{x∼q}[log q(x) − log p(x)], exact for categoricals", "000, 002",
           "vs enumeration"),
        _f("KL-2", "x ∼ q, r = p(x)/q(x): k1 = −log r; k2 = ½(log r)²; k3 = (r − 1) − log r", "004 (E8)",
           "bias, sign and variance with fixed seeds"),
        _f("KL-3", "As a loss on samples from q: E[∇k1] = 0; E[∇k2] = ∇KL[q‖p]; E[∇k3] = ∇KL[p‖q]",
           "beyond the notes (004)", "exact expectations on a categorical"),
        # DP — direct preference methods
        _f("DP-1", "DPO: L = −log σ(β[log π_θ/π_ref(y_w) − log π_θ/π_ref(y_l)])", "004",
           "equals BT on implicit rewards"),
        _f("DP-2", "IPO: L = (h − 1/(2τ))², h = the same log-ratio difference", "004", "minimiser at h = 1/(2τ)"),
        _f("DP-3", "KTO: z₀ = max(0, KL est.); v = λ_D σ(β(r_θ − z₀)) or λ_U σ(β(z₀ − r_θ)); L = E[λ_y − v]",
           "004", "hand case"),
        # GR / DA / DR — group-relative methods
        _f("GR-1", "GRPO advantage Â_i = (r_i − mean(r)) / std(r)", "004", "hand case; all-equal group → 0"),
        _f("GR-2", "GRPO objective (1/G) Σ_i (1/|o_i|) Σ_t [min(ρÂ, clip(ρ, 1±ε)Â) − β k3]", "004",
           "masked reduction vs loop"),
        _f("GR-3", "Length bias: under 1/|o_i| a long wrong answer gets a smaller per-token penalty", "004",
           "per-token gradient weight vs length"),
        _f("DA-1", "Clip-higher: clip(ρ, 1−ε_low, 1+ε_high), ε_low = 0.2, ε_high = 0.28", "004", "hand case"),
        _f("DA-2", "Dynamic sampling: keep only groups with 0 < #correct < G", "004", "filter"),
        _f("DA-3", "Token-level loss: (1/Σ_i |o_i|) Σ_i Σ_t", "004", "reduction vs loop"),
        _f("DA-4", "Overlong shaping: 0 if |y| ≤ L_max − L_cache; ((L_max − L_cache) − |y|)/L_cache up to "
           "L_max; −1 beyond", "004", "piecewise values and continuity"),
        _f("DR-1", "Dr. GRPO: Â_i = r_i − mean(r), no 1/|o_i| (normalise by a constant)", "004",
           "no length dependence"),
        _f("DR-2", "The KL term can be dropped (β = 0) for long reasoning", "004",
           "β = 0 path loads no reference model"),
        # AC — actor–critic and the full algorithm
        _f("AC-1", "Actor gradient E[∇ log π(a|s) Â], critic regressed to r + γV(s′)", "004", "tiny MDP"),
        _f("AC-2", "PPO Algorithm 1: N actors × T steps, GAE, K epochs of minibatch updates on CL-4",
           "001, 003", "a run solves a task"),
    ]
)

ERRATA: dict[str, str] = {
    "E1": "(000) 'D 表示 X 的散度': in PG-1, D is the distribution of prompts, not a divergence.",
    "E2": "(000) '愈接近 reference model 就表示學得愈好': the reward model judges; π_ref only anchors (RM-2).",
    "E3": "(000) '當 DKL 超過閾值時自動縮小學習率': adaptive KL raises β (TR-3) and leaves the learning rate alone.",
    "E4": "(002) '减去一个常数不变': true for any baseline that does not depend on the action (PG-6).",
    "E5": "(003) 'Q(s_t|a)': should read Q(s_t, a).",
    "E6": "(004) 'VM … 为了减少RM计算过程中的高方差': the value model lowers the variance of the policy "
          "gradient, not of the reward model.",
    "E7": "(004) DPO '计算KL散度': the DPO loss is a log-sigmoid of a difference of log-ratios (DP-1), not a KL.",
    "E8": "(004) 'k1有偏': k1 is unbiased (KL-2); its variance and sign are what hurt.",
}

# formula ID → qualified names of the functions that implement it (filled by @implements).
IMPLEMENTED: dict[str, list[str]] = defaultdict(list)

F = TypeVar("F", bound=Callable)


def implements(*ids: str) -> Callable[[F], F]:
    """Decorator: record that the decorated function or class implements formulas `ids`."""
    unknown = [i for i in ids if i not in FORMULAS]
    if unknown:
        raise KeyError(f"unknown formula ID(s) {unknown}; see core/catalog.py")

    def register(fn: F) -> F:
        for formula_id in ids:
            IMPLEMENTED[formula_id].append(f"{fn.__module__}.{fn.__qualname__}")
        fn.__formulas__ = ids  # type: ignore[attr-defined]
        return fn

    return register


_MARK = re.compile(r"""formula\(\s*["']([A-Z]{2}-\d+)["']\s*\)""")


def marked_tests(tests_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Formula ID → test files that carry `@pytest.mark.formula("ID")` (a static scan)."""
    tests_dir = Path(tests_dir) if tests_dir else Path(__file__).resolve().parent.parent / "tests"
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(tests_dir.glob("test_*.py")):
        for formula_id in sorted(set(_MARK.findall(path.read_text(encoding="utf-8")))):
            found[formula_id].append(path.name)
    return dict(found)
