"""The formula catalog in code: every formula of the notes with its ID, and where each one lives.

The notes are five blog posts (in Chinese) that the project follows; a clone of the project does
not contain them, so this module says what a reader needs from them: `NOTES` gives each note's
title (Chinese, and in English) and the short English title that docstrings cite it by,
"note 003 (PPO derived)"; `FORMULAS` gives each formula ID its statement in plain Unicode, its
sources in the notes (note, section, the note's own term beside the English one), the paper and
what a test can check; `ERRATA` lists the places where the notes are loose.

`@implements("AD-4", ...)` on a function records that it implements those formulas
(`IMPLEMENTED`, filled at import time). Everything that reads the project's files — the scans of
`@implements`, of the tests' `@pytest.mark.formula("AD-4")` and of the lessons' `FORMULAS = (...)`,
and `lessons/FORMULAS.md` joined from them — lives beside the lessons, in `lessons/catalog_scan.py`
(`python -m lessons catalog --write` rewrites the file; `python -m lessons verify AD-4` runs one
formula's tests).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

__all__ = [
    "Note", "Source", "Formula", "NOTES", "FAMILIES", "FORMULAS", "ERRATA", "IMPLEMENTED", "implements",
    "family_ranges",
]


@dataclass(frozen=True)
class Note:
    number: str  # "003": how the catalog and the docstrings cite it
    file: str  # the post's file name beside the notes' FORMULAS.md (lessons cite it by this name)
    title_zh: str  # the post's own title, or its opening words where it has none
    title_en: str  # the same in English
    short: str  # the short English title of a first citation: "note 003 (PPO derived)"
    about: str  # what it covers, and in which script
    sections: dict[str, str]  # the note's section headings (as written) → English


NOTES: dict[str, Note] = {
    "000": Note(
        "000", "000_8217fa03f8526d4c.txt",
        "(no title; its first line) Proximal Policy Optimization 是一個 fine-tune Model 的方式",
        "Proximal Policy Optimization is one way to fine-tune a model",
        "RLHF objective",
        "PPO's formulas from a course video, in traditional Chinese: the RLHF objective, its gradient "
        "(the log-derivative trick), Monte Carlo estimation, the KL penalty to a reference model",
        {"基本架構": "basic setup", "Reference model": "reference model", "懲罰值": "the penalty",
         "綜合期望值和懲罰值": "expectation and penalty combined", "只看 reward function": "the reward alone",
         "最後再筆記一下懲罰項": "closing note on the penalty term"},
    ),
    "001": Note(
        "001", "001_883a2028b23f6fee.txt",
        "大模型微调(七):近端策略优化PPO",
        "Fine-tuning large models (7): Proximal Policy Optimization, PPO",
        "PPO for LLMs",
        "RLHF with PPO in simplified Chinese: the Bradley–Terry reward model, the KL-shaped reward, "
        "the advantage with a value model, the clipped objective, the five-step loop",
        {"奖励模型": "reward model", "shape reward": "shaped reward", "优势函数": "advantage function",
         "PPO 会在小批量上最大化": "what PPO maximises on minibatches", "整个循环": "the whole loop"},
    ),
    "002": Note(
        "002", "002_c297ee72da052b00.txt",
        "SQA-042: Proximal Policy Optimization Algorithms (PPO 的原始 paper)",
        "SQA-042: a reading of the PPO paper",
        "PPO paper notes",
        "a reading of Schulman et al. 2017 in simplified Chinese: policy gradient, TRPO, the KL "
        "penalty, the clipped surrogate, adaptive β, PPO for LLM post-training (sparse and dense reward)",
        {heading: heading for heading in (  # its headings are in English already
            "Policy Gradient", "TRPO (Trust Region Policy Optimization)", "Problem: how to regularize",
            "Clipped Surrogate Objective", "Adaptive KL Penalty Coefficient", "PPO for LLM post-training")},
    ),
    "003": Note(
        "003", "003_0b6419f90971e6ff.txt",
        "大语言模型训练原理与实践（三）：PPO算法",
        "Training large language models, principles and practice (3): the PPO algorithm",
        "PPO derived",
        "PPO derived step by step in simplified Chinese: the policy gradient theorem, importance "
        "sampling, the clip and why the min, the advantage, k-step estimates and GAE(λ)",
        {"策略梯度算法": "the policy gradient algorithm", "PPO算法": "the PPO algorithm",
         "重要性采样": "importance sampling", "约束": "the constraint", "优势函数": "the advantage function",
         "最终的目标函数": "the final objective", "如何估计优势函数": "how to estimate the advantage"},
    ),
    "004": Note(
        "004", "004_27c6b9375ccb306e.txt",
        "(no title; its sections) PG · Actor-Critic · TRPO · GAE · PPO · DPO · KTO · IPO · GRPO · DAPO · DR.GRPO",
        "From policy gradient to PPO, DPO and GRPO: survey notes",
        "PG to GRPO",
        "a survey in simplified Chinese: the six weightings of ∇log π, actor–critic, TRPO, GAE, PPO "
        "and its four models in RLHF, DPO, KTO, IPO, GRPO, DAPO, Dr. GRPO, the k1/k2/k3 KL estimators",
        {"PG": "policy gradient", "Actor-Critic": "actor–critic", "TRPO": "TRPO", "GAE": "GAE",
         "PPO(近端策略优化)": "PPO, proximal policy optimisation",
         "PPO的下半场——如何应用于LLM后训练": "the second half of PPO: LLM post-training",
         "DPO(直接偏好优化)": "DPO, direct preference optimisation", "KTO": "KTO", "IPO": "IPO",
         "GRPO群体相对策略优化": "GRPO, group relative policy optimisation", "DAPO": "DAPO",
         "DR.GRPO": "Dr. GRPO", "KL散度三种估计": "three estimators of the KL divergence"},
    ),
}

FAMILIES: dict[str, str] = {
    "PG": "policy gradient",
    "IS": "importance sampling",
    "TR": "trust regions and the KL penalty",
    "CL": "the clipped objective",
    "AD": "advantages and GAE(λ)",
    "RM": "reward model and RLHF with PPO",
    "KL": "KL estimators",
    "DP": "direct preference methods",
    "GR": "GRPO",
    "DA": "DAPO",
    "DR": "Dr. GRPO",
    "AC": "actor–critic and the full algorithm",
}


@dataclass(frozen=True)
class Source:
    note: str  # a key of NOTES
    section: str  # a key of NOTES[note].sections
    term_zh: str  # the note's own words for the idea
    term_en: str  # the same in English

    def cite(self) -> str:
        """'note 003 (PPO derived), § 如何估计优势函数 (how to estimate the advantage): 「TD残差」 (TD residual)'."""
        note = NOTES[self.note]
        english = note.sections[self.section]
        section = self.section if english == self.section else f"{self.section} ({english})"
        return f"note {self.note} ({note.short}), § {section}: 「{self.term_zh}」 ({self.term_en})"


@dataclass(frozen=True)
class Formula:
    id: str
    statement: str  # plain Unicode, readable in a terminal
    notes: str  # the notes it comes from, as numbers: "003, 004"
    check: str  # what a test can check
    sources: tuple[Source, ...] = ()  # where in the notes, with the notes' own terms
    paper: str = ""  # the paper (and equation) it comes from, where there is one

    @property
    def family(self) -> str:
        return self.id.split("-")[0]


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
           "controller trace; a penalty run keeps KL in band; β stays in [β₀/bound, β₀·bound]; warm-up and cadence"),
        _f("TR-4", "Proportional controller: e = clip(d/d_targ − 1, −0.2, 0.2); β ← β(1 + e·n/H)",
           "extension of TR-3", "controller trace; the update and its bounds by hand"),
        # CL — the clipped objective
        _f("CL-1", "L^CLIP = E[min(ρ A, clip(ρ, 1−ε, 1+ε) A)]", "001, 002, 003", "hand cases"),
        _f("CL-2", "Why the min: gradient zero exactly when (A>0, ρ>1+ε) or (A<0, ρ<1−ε); clip alone also "
           "zeroes (A>0, ρ<1−ε) and (A<0, ρ>1+ε)", "003", "autograd over all six cases"),
        _f("CL-3", "L^CLIP ≤ E[ρ A] pointwise, equal to first order at ρ = 1", "003", "property test"),
        _f("CL-4", "Full loss: −L^CLIP + c₁·½(V_ψ(s) − V^targ)² − c₂ H[π_θ(·|s)], optional value clipping",
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
        _f("AD-7", "Critic target V^targ_t = Â_t + V_t (λ-return); critic loss ½(V_ψ(s_t) − V^targ_t)²",
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
        _f("DA-3", "Token-level loss: (1/Σ_i |o_i|) Σ_i Σ_t over every token of the sampled batch; "
           "in minibatches each step is its share (sum / (batch tokens / minibatches))", "004",
           "reduction vs loop; batch-level vs per-minibatch token mean told apart"),
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


# Where each formula sits in the notes (note, section, the note's term, its English) and its paper.
_S = Source
_PPO = "Schulman et al. 2017, Proximal Policy Optimization Algorithms"
_GAE = "Schulman et al. 2016, High-Dimensional Continuous Control Using Generalized Advantage Estimation"
_WHERE: dict[str, tuple[tuple[Source, ...], str]] = {
    "PG-1": ((_S("000", "基本架構", "對每個 query X 計算 EX~D[EY~πθ[r(X,Y)]], 式 (1)",
                 "the expected reward over queries, eq (1)"),), ""),
    "PG-2": ((_S("000", "只看 reward function", "解析函數: 所有 Y 可能的值乘上它的機率的和, 式 (2)",
                 "closed form: every reply's reward times its probability, eq (2)"),), ""),
    "PG-3": ((_S("000", "只看 reward function", "微積分的 chain rule, 式 (4)", "the chain rule for log, eq (4)"),), ""),
    "PG-4": ((_S("000", "只看 reward function", "策略梯度定理", "policy gradient theorem"),
              _S("002", "Policy Gradient", "采样不能传梯度", "sampling passes no gradient"),
              _S("003", "策略梯度算法", "策略梯度", "policy gradient"),
              _S("004", "PG", "策略梯度", "policy gradient")),
             "Williams 1992, REINFORCE"),
    "PG-5": ((_S("000", "只看 reward function", "蒙特卡羅方法收斂速度為 O(1/√N)",
                 "Monte Carlo converges as O(1/√N)"),), ""),
    "PG-6": ((_S("002", "Policy Gradient", "减去一个常数不变", "subtracting a constant changes nothing; erratum E4"),
              _S("003", "优势函数", "优势函数", "advantage function"),
              _S("004", "Actor-Critic", "减去一个基线函数 … 减小方差", "subtract a baseline to lower the variance")),
             "Williams 1992, REINFORCE with baseline"),
    "PG-7": ((_S("003", "策略梯度算法", "策略梯度 … 核心公式", "the core formula of the policy gradient"),
              _S("003", "PPO算法", "V 函数的定义", "the definition of V")),
             "Sutton et al. 2000, Policy Gradient Methods for RL with Function Approximation"),
    "PG-8": ((_S("004", "Actor-Critic", "方法1–6", "methods 1 to 6"),), f"{_GAE}, §2"),
    "IS-1": ((_S("003", "重要性采样", "重要性采样: 固定分母, 优化分子", "importance sampling: fix the denominator, "
                 "optimise the numerator"),
              _S("002", "TRPO (Trust Region Policy Optimization)", "所有 RL 方法的大方向",
                 "the shape of every RL method")),
             "Kakade & Langford 2002; Schulman et al. 2015 (TRPO), eq. 14"),
    "IS-2": ((_S("002", "PPO for LLM post-training", "把一整个答案看作一个 action; 整段话的 new/old model prob ratio",
                 "a whole answer as one action; the new/old ratio of the whole reply"),), ""),
    "TR-1": ((_S("002", "TRPO (Trust Region Policy Optimization)", "subject to E[KL] ≤ δ", "the KL constraint"),
              _S("004", "TRPO", "信赖域; 线性搜索", "trust region; line search")),
             "Schulman et al. 2015, Trust Region Policy Optimization, §6 and Appendix C"),
    "TR-2": ((_S("002", "Problem: how to regularize", "很难找到一个单一的 β", "no single β works throughout"),
              _S("004", "PPO(近端策略优化)", "PPO惩罚: 拉格朗日乘数法", "PPO penalty: a Lagrange multiplier")),
             f"{_PPO}, eq. 8"),
    "TR-3": ((_S("002", "Adaptive KL Penalty Coefficient", "动态调整 β", "adjust β dynamically"),
              _S("000", "最後再筆記一下懲罰項", "動態調整更新步長", "adjusts the step size dynamically; erratum E3")),
             f"{_PPO}, §4"),
    "TR-4": ((_S("002", "Adaptive KL Penalty Coefficient", "这个方法很 sensitive", "this method is sensitive"),),
             "Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences, §2.2"),
    "CL-1": ((_S("001", "PPO 会在小批量上最大化", "min-with-clip; 裁剪", "min with clip; clipping"),
              _S("002", "Clipped Surrogate Objective", "对这个东西 clip 一下", "clip the ratio"),
              _S("003", "约束", "裁剪", "clipping")),
             f"{_PPO}, eq. 7"),
    "CL-2": ((_S("003", "最终的目标函数", "已经clip了为什么还要取min", "why the min after the clip"),), f"{_PPO}, §3"),
    "CL-3": ((_S("003", "最终的目标函数", "取min运算", "taking the min"),), f"{_PPO}, §3 (a pessimistic bound)"),
    "CL-4": ((_S("001", "PPO 会在小批量上最大化", "R̂ 是价值学习的回报/目标", "R̂, the value-learning target"),
              _S("004", "PPO的下半场——如何应用于LLM后训练", "同时对value model和policy model进行优化",
                 "train the value and the policy model together")),
             f"{_PPO}, eq. 9"),
    "AD-1": ((_S("003", "优势函数", "优势函数", "advantage function"),
              _S("001", "优势函数", "比预期更好还是更差", "better or worse than expected")),
             f"{_GAE}, §2"),
    "AD-2": ((_S("003", "如何估计优势函数", "TD残差", "TD residual"),
              _S("004", "Actor-Critic", "Q=r+γV", "Q = r + γV")),
             f"{_GAE}, eq. 10"),
    "AD-3": ((_S("003", "如何估计优势函数", "k 阶近似估计", "k-th order estimate"),), f"{_GAE}, eqs. 11–14"),
    "AD-4": ((_S("003", "如何估计优势函数", "广义优势估计 GAE", "generalised advantage estimation"),
              _S("004", "GAE", "指数加权平均", "exponentially weighted average")),
             f"{_GAE}, eq. 16"),
    "AD-5": ((_S("004", "GAE", "完整流程中的优势", "the advantage over a whole episode"),),
             "Pardo et al. 2018, Time Limits in Reinforcement Learning"),
    "AD-6": ((_S("003", "如何估计优势函数", "偏差越小 … 方差反而变大", "less bias … but more variance"),),
             f"{_GAE}, §3"),
    "AD-7": ((_S("004", "Actor-Critic", "critic应该如何优化", "how to train the critic"),),
             "Sutton & Barto 2018, Reinforcement Learning, §12.1 (the λ-return)"),
    "RM-1": ((_S("001", "奖励模型", "奖励模型", "reward model"),
              _S("004", "PPO的下半场——如何应用于LLM后训练", "RM是通过预训练模型+数据对来实现训练的",
                 "the RM is a pretrained model trained on pairs")),
             "Bradley & Terry 1952; Ouyang et al. 2022 (InstructGPT), eq. 1"),
    "RM-2": ((_S("000", "綜合期望值和懲罰值", "期望值 – β 懲罰值", "expected reward minus β times the penalty"),
              _S("001", "shape reward", "KL惩罚 … 像刹车一样", "the KL penalty works like a brake")),
             "Rafailov et al. 2023 (DPO), eq. 4"),
    "RM-3": ((_S("001", "shape reward", "shape reward, 形状奖励", "shaped reward"),
              _S("002", "PPO for LLM post-training", "sparse reward: 一整个答案才给一个 reward; dense reward",
                 "one reward per answer, or per token"),
              _S("004", "PPO的下半场——如何应用于LLM后训练", "计算reward值和value", "compute rewards and values")),
             "Ziegler et al. 2019, §2; Stiennon et al. 2020"),
    "RM-4": ((_S("000", "只看 reward function", "當 β = 0, 忽略掉懲罰的話", "with β = 0, ignoring the penalty"),), ""),
    "RM-5": ((_S("004", "PPO的下半场——如何应用于LLM后训练", "参数是从RM上进行初始化的",
                 "its parameters are initialised from the RM"),),
             "Ouyang et al. 2022 (InstructGPT), Appendix C.3"),
    "RM-6": ((_S("001", "整个循环", "整个循环可以简单总结为 1.–5.", "the whole loop in five steps"),
              _S("004", "PPO的下半场——如何应用于LLM后训练", "PPO过程是怎么进行训练的", "how PPO training proceeds")),
             "Ouyang et al. 2022 (InstructGPT), §3.5"),
    "KL-1": ((_S("000", "懲罰值", "DKL[πθ || πref], Kullback-Leibler", "the KL divergence"),
              _S("002", "TRPO (Trust Region Policy Optimization)", "KL 散度如何计算", "how the KL is computed")),
             "Kullback & Leibler 1951"),
    "KL-2": ((_S("004", "KL散度三种估计", "k1有偏有方差 k2有偏低方差 k3无偏低方差",
                 "k1 biased with variance, k2 biased low variance, k3 unbiased low variance; erratum E8"),),
             "Schulman 2020, Approximating KL Divergence (blog post)"),
    "KL-3": ((_S("004", "KL散度三种估计", "PPO是使用KL1训练的,GRPO是使用KL3训练的",
                 "PPO trains with k1, GRPO with k3"),),
             "Schulman 2020, Approximating KL Divergence (blog post)"),
    "DP-1": ((_S("004", "DPO(直接偏好优化)", "4份概率; 计算KL散度",
                 "four log-probabilities; computing a KL divergence, erratum E7"),),
             "Rafailov et al. 2023, Direct Preference Optimization, eq. 7"),
    "DP-2": ((_S("004", "IPO", "正则化 τ", "the regulariser τ"),), "Azar et al. 2023, A General Theoretical "
             "Paradigm to Understand Learning from Human Preferences (IPO), eq. 17"),
    "DP-3": ((_S("004", "KTO", "前景理论; 参考kl散度", "prospect theory; the reference KL"),),
             "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, eq. 8"),
    "GR-1": ((_S("004", "GRPO群体相对策略优化", "对每个样本做正则化; 优势函数的估计",
                 "normalise each sample's reward"),),
             "Shao et al. 2024, DeepSeekMath, §4.1.2"),
    "GR-2": ((_S("004", "GRPO群体相对策略优化", "重要性采样比; 裁剪的目标函数; KL 散度正则项",
                 "policy ratio; clipped objective; KL regulariser"),),
             "Shao et al. 2024, DeepSeekMath, eq. 3"),
    "GR-3": ((_S("004", "GRPO群体相对策略优化", "跟长度有关,会使得模型倾向于生成更长的文本",
                 "length-dependent: favours longer text"),),
             "Liu et al. 2025, Understanding R1-Zero-Like Training, §3.1"),
    "DA-1": ((_S("004", "DAPO", "裁剪偏移(Clip-Shifting); 更大范围的裁切", "clip-higher: a wider upper clip"),),
             "Yu et al. 2025, DAPO, §3.1"),
    "DA-2": ((_S("004", "DAPO", "动态采样(Dynamic Sampling)", "dynamic sampling"),), "Yu et al. 2025, DAPO, §3.2"),
    "DA-3": ((_S("004", "DAPO", "Token级策略梯度损失", "token-level policy-gradient loss"),),
             "Yu et al. 2025, DAPO, §3.3"),
    "DA-4": ((_S("004", "DAPO", "溢出奖励塑造(Overflowing Reward Shaping)", "overlong reward shaping"),),
             "Yu et al. 2025, DAPO, §3.4, eq. 13"),
    "DR-1": ((_S("004", "DR.GRPO", "删除了对长度均值以及std", "drop the length mean and the std"),),
             "Liu et al. 2025, Understanding R1-Zero-Like Training, §3.2"),
    "DR-2": ((_S("004", "DR.GRPO", "KL散度在这种场景下不必须", "the KL is not needed here"),),
             "Liu et al. 2025, Understanding R1-Zero-Like Training, §3.2"),
    "AC-1": ((_S("004", "Actor-Critic", "actor-critic的雏形; critic应该如何优化",
                 "the germ of actor–critic; how to train the critic"),),
             "Konda & Tsitsiklis 2000; Sutton & Barto 2018, §13.5"),
    "AC-2": ((_S("001", "整个循环", "整个循环", "the whole loop"),
              _S("003", "策略梯度算法", "On-Policy 的策略梯度算法", "an on-policy policy-gradient algorithm")),
             f"{_PPO}, Algorithm 1"),
}
FORMULAS = {fid: replace(f, sources=_WHERE[fid][0], paper=_WHERE[fid][1]) for fid, f in FORMULAS.items()}
del _S

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


def family_ranges() -> str:
    """'PG-1…PG-8, IS-1…IS-2, …': every valid ID, family by family."""
    by_family: dict[str, list[str]] = defaultdict(list)
    for fid in FORMULAS:
        by_family[fid.split("-")[0]].append(fid)
    return ", ".join(ids[0] if len(ids) == 1 else f"{ids[0]}…{ids[-1]}" for ids in by_family.values())
