"""Lesson 13 — GRPO, DAPO and Dr. GRPO: group-relative advantages, and what each fix changes.

What it teaches
    GRPO drops the value model: it samples a group of G replies to one prompt and uses the
    group's mean reward as the baseline, divided by the group's standard deviation. A group whose
    replies all score the same teaches nothing. Its loss averages each reply's tokens first
    (1/|o_i|), so a token of a long reply weighs less than a token of a short one: long wrong
    answers are punished less per token and short right answers rewarded more, and replies drift
    longer where they are wrong. DAPO averages over all tokens of the batch, clips the ratio
    asymmetrically (more room upward, so unlikely tokens can still grow), refills the batch with
    groups that carry a signal, and ramps a penalty on replies that approach the length limit.
    Dr. GRPO removes both the length normalisation and the std, and, like DAPO, the KL term, so
    that no reference model needs to be loaded. A bandit of answers with lengths shows the length
    drift under GRPO and its absence under DAPO's and Dr. GRPO's reductions.

Notes followed
    004_27c6b9375ccb306e.txt (PG to GRPO): "GRPO群体相对策略优化": its three parts, 重要性采样比 (policy
        ratio), 裁剪的目标函数 (clipped objective), KL 散度正则项 (KL regulariser); the 优势函数
        (advantage) "对每个样本做正则化" (normalised within the group); "很容易全对导致熵崩溃,且跟长度
        有关,会使得模型倾向于生成更长的文本" (all-correct groups, entropy collapse, longer text).
        "DAPO": 裁剪偏移 (Clip-Shifting, the paper's Clip-Higher) "采用更大范围的裁切来防止熵衰减";
        动态采样 (dynamic sampling) "对采样的数据做过滤"; Token级策略梯度损失 (token-level loss)
        "GRPO倾向更长的token"; 溢出奖励塑造 (the paper's overlong reward shaping) "根据条件截断".
        "DR.GRPO": "删除了对长度均值以及std" (no length mean, no std); "KL散度在这种场景下不必须,
        从而可以删除限制" (the KL term can be dropped). "KL散度三种估计": GRPO uses k3 in the loss.

Formula IDs: GR-1, GR-2, GR-3, DA-1, DA-2, DA-3, DA-4, DR-1, DR-2.

Run:  python -m lessons run 13 [--step] [--long]
    The real runs are `python -m llm.pipeline --task arithmetic --algo grpo` (or `dapo`,
    `dr_grpo`): SFT, then group-relative RL with the arithmetic checker as the reward.

Deviations from the papers
    Hand-made tensors stand in for a model's per-token log-probabilities in steps 1–4; step 5
    simulates 0/1 verifier rewards; step 6 uses DAPO's lengths (L_max = 20480, L_cache = 4096).
    Step 7 times the rollout of an untrained model of the pipeline's default size on the
    arithmetic task. Step 8's bandit has four answers (right or wrong, 8 or 32 tokens); only the
    first token of an answer chooses it (the rest follow with probability 1), so the length
    enters only through the loss's normalisation, which is the effect under study. It runs one
    on-policy PPO epoch per batch (`core.ppo.ppo_update`, no critic, no KL) with plain SGD; the
    "DAPO" row uses the token-level loss, clip-higher and dynamic sampling, without the overlong
    penalty (no answer reaches the limit). Dr. GRPO's constant is the 32-token budget. --long
    averages five runs of the bandit and simulates more groups in step 5.
"""

FORMULAS = ("GR-1", "GR-2", "GR-3", "DA-1", "DA-2", "DA-3", "DA-4", "DR-1", "DR-2")

# %% Setup
import math
import random
import time

import torch
import torch.nn.functional as F

from core.group import group_advantages, informative_groups, overlong_penalty
from core.kl import kl_estimate
from core.losses import clipped_surrogate
from core.masked import reduce_loss
from core.ppo import Evaluation, PPOConfig, ppo_update
from lessons._common import Lesson, plt, say, table
from llm.config import ModelArgs, model_config
from llm.gpt import GPT
from llm.rlhf import collect_rollout, gold_scorer
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

lesson = Lesson(__doc__)
f64 = torch.float64


def fmt_list(values, digits=3):
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in values) + "]"


# %% Step 1 — GR-1 and DR-1: the group is the baseline
lesson.step("Group-relative advantages (优势函数), with and without the std", ids=["GR-1", "DR-1"])
rewards = torch.tensor([1.0, 0.5, 0.0, 0.0, 1.0, 0.2], dtype=f64)
grpo = group_advantages(rewards)
by_hand = [(r - float(rewards.mean())) / (float(rewards.std()) + 1e-4) for r in rewards.tolist()]
print(f"    rewards of a group of G = 6 replies: {rewards.tolist()}")
print(f"    GRPO  group_advantages(r)                      {fmt_list(grpo)}")
print(f"          (r − mean)/(std + 1e-4) by hand          {fmt_list(by_hand)}   (unbiased std)")
print(f"    Dr.   group_advantages(r, scale_by_std=False)  {fmt_list(group_advantages(rewards, scale_by_std=False))}")
G = 6
rows = []
for k in range(G + 1):  # k of the G replies are right (reward 1), the rest wrong (0)
    group = torch.tensor([1.0] * k + [0.0] * (G - k), dtype=f64)
    a_grpo, a_dr = group_advantages(group), group_advantages(group, scale_by_std=False)
    rows.append([f"{k} of {G}", float(a_grpo[0]) if k else "—", float(a_grpo[-1]) if k < G else "—",
                 float(a_dr[0]) if k else "—", float(a_dr[-1]) if k < G else "—"])
table(["right", "GRPO: Â right", "GRPO: Â wrong", "Dr. GRPO: Â right", "Dr. GRPO: Â wrong"], rows, digits=3)
say("0 of 6 or 6 of 6: every Â is 0, the group carries no signal (all right is the note's 全对 case).",
    "The std makes the lone right answer of a hard prompt (1 of 6) worth Â = 2.04 but a right answer of a",
    "3-of-6 prompt 0.91: dividing by the std scales up groups whose rewards barely differ. Dr. GRPO keeps",
    "r − mean: a right answer still counts more on a harder prompt, but no group is scaled up for being",
    "nearly uniform.", blank=True)
hand_gap = max(abs(float(a) - b) for a, b in zip(grpo, by_hand))
uniform_groups = [group_advantages(torch.full((G,), v, dtype=f64), scale_by_std=s_).abs().max()
                  for v in (0.0, 1.0) for s_ in (True, False)]
lesson.verdict("group_advantages matches the hand formula; all-right and all-wrong groups carry no signal; the std "
               "scales the lone right answer of a hard prompt above a right answer of a 3-of-6 prompt, and Dr. GRPO "
               "still ranks the hard prompt's right answer higher",
               hand_gap < 1e-12 and max(float(v) for v in uniform_groups) == 0 and rows[1][1] > rows[3][1]
               and rows[1][3] > rows[3][3],
               f"gap {hand_gap:.0e}; max |Â| of uniform groups {max(float(v) for v in uniform_groups):g}; GRPO right "
               f"{rows[1][1]:.2f} (1 of 6) vs {rows[3][1]:.2f} (3 of 6); Dr. GRPO {rows[1][3]:.2f} vs {rows[3][3]:.2f}")

# %% Step 2 — GR-2: the GRPO objective, token by token
BETA, EPS = 0.04, 0.2
lesson.step("The GRPO objective: ratio, clip and KL (重要性采样比, 裁剪的目标函数, KL 散度正则项)", ids=["GR-2"])
g = lesson.generator(2)
lengths = torch.tensor([3, 5, 8, 2])
T = int(lengths.max())
mask = (torch.arange(T)[None, :] < lengths[:, None]).to(f64)  # (G, T): 1 on real tokens
old_logp = -torch.rand(4, T, generator=g, dtype=f64) * 2 * mask  # log π_old(o_{i,t})
new_logp = old_logp + 0.3 * torch.randn(4, T, generator=g, dtype=f64) * mask  # log π_θ after some updates
ref_logp = old_logp + 0.2 * torch.randn(4, T, generator=g, dtype=f64) * mask  # log π_ref
adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=f64))[:, None].expand(4, T) * mask  # Â_i on every token
per_token = clipped_surrogate(new_logp, old_logp, adv, clip_coef=EPS) - BETA * kl_estimate(new_logp, ref_logp, "k3")
objective = reduce_loss(per_token, mask, loss_reduction="seq_mean")
loop = 0.0  # the same by a plain loop: (1/G) Σ_i (1/|o_i|) Σ_t [min(ρÂ, clip(ρ)Â) − β k3]
for i in range(4):
    total = 0.0
    for t in range(int(lengths[i])):
        rho = math.exp(float(new_logp[i, t] - old_logp[i, t]))
        a = float(adv[i, t])
        log_r = float(ref_logp[i, t] - new_logp[i, t])
        total += min(rho * a, min(max(rho, 1 - EPS), 1 + EPS) * a) - BETA * (math.exp(log_r) - 1 - log_r)
    loop += total / int(lengths[i]) / 4
print(f"    G = 4 replies of lengths {lengths.tolist()}, ε = {EPS}, β = {BETA}, KL by k3 (lesson 8):")
print(f"    reduce_loss(clipped_surrogate − β·k3, mask, loss_reduction='seq_mean') = {float(objective):.10f}")
print(f"    plain loop over replies and tokens                           = {loop:.10f}")
lesson.verdict("reduce_loss(clipped_surrogate − β·k3, 'seq_mean') is the GRPO objective of the loop",
               abs(float(objective) - loop) < 1e-10, f"difference {abs(float(objective) - loop):.0e} < 1e-10")
say("In core.ppo this is PPOConfig(loss_reduction='seq_mean', ref_kl_coef=β, ref_kl_estimator='k3',",
    "vf_coef=0): the PPO update of lesson 9 with the group's Â and no critic. The KL to π_ref sits in the",
    "loss as k3, not in the reward as k1 as in PPO-RLHF (lesson 11; note 004: GRPO是使用KL3训练的).", blank=True)

# %% Step 3 — GR-3, DA-3, DR-1: the three reductions and the weight of one token
lesson.step("Who pays for a long wrong answer? Per-token weights of the three reductions",
            "seq_mean   (GRPO, GR-2):     (1/G) Σ_i (1/|o_i|) Σ_t ℓ_it    a token weighs 1/(G·|o_i|)",
            "token_mean (DAPO, DA-3):     (1/Σ_i |o_i|) Σ_i Σ_t ℓ_it      a token weighs 1/Σ_i |o_i|",
            "constant   (Dr. GRPO, DR-1): (1/(G·C)) Σ_i Σ_t ℓ_it          a token weighs 1/(G·C)",
            ids=["GR-3", "DA-3", "DR-1"])
lengths = torch.tensor([2, 4, 8, 16])
T = int(lengths.max())
mask = (torch.arange(T)[None, :] < lengths[:, None]).to(f64)
advantage = -1.0  # four wrong answers of different lengths, the same Â
weights = {}
for mode in ("seq_mean", "token_mean", "constant"):
    logp = torch.zeros(4, T, dtype=f64, requires_grad=True)  # log π_θ of each token, at ρ = 1
    objective = clipped_surrogate(logp, torch.zeros_like(logp), torch.full_like(logp, advantage), clip_coef=EPS)
    loss = -reduce_loss(objective, mask, loss_reduction=mode, loss_constant=float(T))
    (grad,) = torch.autograd.grad(loss, logp)  # ∂loss/∂log π(o_{i,t}): how hard each token is pushed down
    weights[mode] = grad[:, 0]  # the same for every token of a reply
print("    ∂loss/∂log π of one token, and × |o_i| for the whole reply:")
table(["|o_i|", "seq_mean: token", "reply", "token_mean: token", "reply", f"constant (C = {T}): token", "reply"],
      [[int(n), float(weights["seq_mean"][i]), float(weights["seq_mean"][i] * n), float(weights["token_mean"][i]),
        float(weights["token_mean"][i] * n), float(weights["constant"][i]), float(weights["constant"][i] * n)]
       for i, n in enumerate(lengths)], digits=4)
ratio = float(weights["seq_mean"][0] / weights["seq_mean"][-1])
say(f"Â = {advantage} for all four (all wrong). ∂loss/∂log π > 0 pushes the token's probability down.",
    "Under seq_mean each reply carries the same total, spread over its tokens: a token of the 2-token",
    f"answer is pushed down {ratio:.0f}× harder than a token of the 16-token one. Every token of a long wrong",
    "answer, the ones that made it long included, is punished less, and with Â > 0 a short right answer",
    "is rewarded more per token: the length bias (GRPO倾向更长的token). token_mean and constant give",
    "every token the same weight; the constant also does not change with the batch's lengths.", blank=True)
lesson.verdict("Under seq_mean a token of the 2-token answer is pushed 8× harder than one of the 16-token answer; "
               "token_mean and constant give every token the same weight",
               abs(ratio - 8) < 1e-9 and all(float(weights[m].max() - weights[m].min()) < 1e-12
                                             for m in ("token_mean", "constant")),
               f"seq_mean ratio {ratio:.2f}; spread of the per-token weights under token_mean and constant "
               f"{max(float(weights[m].max() - weights[m].min()) for m in ('token_mean', 'constant')):.0e}")

# DA-3 is a mean over every token of the *sampled batch*. PPO trains a batch in minibatches, one optimiser
# step each: dividing each minibatch by its own token count ('minibatch_token_mean') is another loss.
# core.ppo passes reduce_loss n_tokens = the batch's tokens / the number of minibatches instead, so
# each minibatch step is its share of the batch's token mean (DAPO's reference code does the same).
halves = [(slice(0, 2), "replies of 2 and 4 tokens"), (slice(2, 4), "replies of 8 and 16 tokens")]
n_minibatch_tokens = float(mask.sum()) / len(halves)
rows, step_weights = [], {"token_mean": [], "minibatch_token_mean": []}
for rows_of, label in halves:
    for mode in step_weights:
        logp = torch.zeros(2, T, dtype=f64, requires_grad=True)
        objective = clipped_surrogate(logp, torch.zeros_like(logp), torch.full_like(logp, advantage), clip_coef=EPS)
        extra = {"n_tokens": n_minibatch_tokens} if mode == "token_mean" else {}
        loss = -reduce_loss(objective, mask[rows_of], loss_reduction=mode, **extra)
        (grad,) = torch.autograd.grad(loss, logp)
        step_weights[mode].append(float(grad[0, 0]))
    rows.append([label, int(mask[rows_of].sum()), step_weights["token_mean"][-1],
                 step_weights["minibatch_token_mean"][-1]])
print("\n    The same four replies in two minibatches (one optimiser step each): the weight of one token")
table(["minibatch", "tokens", "token_mean (DAPO: over the batch)", "minibatch_token_mean"], rows, digits=4)
say(f"DAPO's token mean divides every step by the batch's {int(mask.sum())} tokens / 2 minibatches = "
    f"{n_minibatch_tokens:g}: every token of the",
    "batch weighs the same, whichever minibatch it lands in. Divided by its own tokens, the minibatch of",
    "short replies gives each of its tokens 4× the weight: a per-minibatch normalisation, not DAPO's.", blank=True)
lesson.verdict("DA-3 over minibatches: with n_tokens = batch tokens / minibatches every token of the batch weighs "
               "the same in every step; the per-minibatch token mean weighs a token of the short-reply minibatch "
               "4× more",
               abs(step_weights["token_mean"][0] - step_weights["token_mean"][1]) < 1e-12
               and abs(step_weights["minibatch_token_mean"][0] / step_weights["minibatch_token_mean"][1] - 4) < 1e-9,
               f"token_mean {step_weights['token_mean'][0]:.4f} and {step_weights['token_mean'][1]:.4f}; "
               f"minibatch_token_mean {step_weights['minibatch_token_mean'][0]:.4f} and "
               f"{step_weights['minibatch_token_mean'][1]:.4f}")

fig, ax = plt.subplots(figsize=(6.5, 3.8))
sizes = torch.arange(1, 33).double()
total = int(lengths.sum())
ax.loglog(sizes, 1 / (4 * sizes), color="C0", label="seq_mean (GRPO): 1/(G·|o_i|)")
ax.loglog(sizes, torch.full_like(sizes, 1 / total), color="C1", label=f"token_mean (DAPO): 1/Σ|o| (Σ|o| = {total})")
ax.loglog(sizes, torch.full_like(sizes, 1 / (4 * T)), color="C2", label=f"constant (Dr. GRPO): 1/(G·C), C = {T}")
for color, mode in zip(("C0", "C1", "C2"), ("seq_mean", "token_mean", "constant")):
    ax.scatter(lengths, weights[mode], color=color, zorder=3)
ax.set_xlabel("reply length |o_i| (tokens)")
ax.set_ylabel("gradient weight of one token")
ax.set_title("GR-3: per-token weight against reply length (G = 4; dots: autograd)")
ax.legend(fontsize=7)
lesson.save(fig, "token_weights.png")

# %% Step 4 — DA-1: clip-higher
EPS_LOW, EPS_HIGH = 0.2, 0.28
lesson.step("Clip-higher (裁剪偏移, 采用更大范围的裁切来防止熵衰减)", ids=["DA-1"])


def clip_grad(ratio, advantage, high):
    """Objective and ∂objective/∂log π at a given ratio (log π_old = 0)."""
    log_ratio = torch.tensor(math.log(ratio), dtype=f64, requires_grad=True)
    value = clipped_surrogate(log_ratio, torch.zeros(()), torch.tensor(advantage, dtype=f64), clip_coef=EPS_LOW,
                              clip_coef_high=high)
    (grad,) = torch.autograd.grad(value, log_ratio)
    return float(value.detach()), float(grad)


rows = []
for ratio in (0.7, 0.8, 0.9, 1.0, 1.15, 1.2, 1.25, 1.28, 1.35):
    sym_pos, asym_pos = clip_grad(ratio, 1.0, None), clip_grad(ratio, 1.0, EPS_HIGH)
    sym_neg, asym_neg = clip_grad(ratio, -1.0, None), clip_grad(ratio, -1.0, EPS_HIGH)
    rows.append([ratio, sym_pos[1], asym_pos[1], sym_neg[1], asym_neg[1]])
table(["ρ", "A>0: ∂/∂log π, ε = 0.2", f"A>0: ε_high = {EPS_HIGH}", "A<0: ε = 0.2", f"A<0: ε_high = {EPS_HIGH}"], rows,
      digits=3)
say(f"ε_low = {EPS_LOW}, ε_high = {EPS_HIGH} (DAPO's values). With A > 0 a token keeps its gradient up to",
    f"ρ = {1 + EPS_HIGH} instead of {1 + EPS_LOW}; below 1 − ε_low nothing changes, and A < 0 is untouched (its clip",
    "is at 1 − ε_low). Why it matters: a token with A > 0 stops being pushed once its probability passes",
    "π_old·(1 + ε_high). A likely token (π_old = 0.9) meets the ceiling of 1 first either way, but an",
    "unlikely one (π_old = 0.01) is pushed up to 0.0128 instead of 0.012 per update: rare tokens that",
    "turned out good can grow faster, and the policy's entropy falls less quickly (防止熵衰减).", blank=True)
between = [r for r in rows if 1 + EPS_LOW < r[0] < 1 + EPS_HIGH]
lesson.verdict(f"With A > 0 a token keeps its gradient up to ρ = {1 + EPS_HIGH} instead of {1 + EPS_LOW}; A < 0 is "
               "untouched",
               bool(between) and all(r[1] == 0 and r[2] > 0 for r in between)
               and all(r[3] == r[4] for r in rows) and all(r[1] == r[2] for r in rows if r[0] <= 1 + EPS_LOW),
               f"at ρ in ({1 + EPS_LOW}, {1 + EPS_HIGH}): ∂/∂log π "
               + ", ".join(f"{r[1]:g} → {r[2]:.2f}" for r in between) + "; A < 0 columns identical")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
grid = torch.linspace(0.5, 1.6, 221, dtype=f64)
for ax, a in zip(axes, (1.0, -1.0)):
    for high, style, label in ((None, "--", "ε = 0.2 both ways (PPO, GRPO)"),
                               (EPS_HIGH, "-", f"ε_low = 0.2, ε_high = {EPS_HIGH} (DAPO)")):
        ax.plot(grid, clipped_surrogate(grid.log(), torch.zeros_like(grid), torch.full_like(grid, a), clip_coef=EPS_LOW,
                                        clip_coef_high=high), style, label=label)
    ax.set_title(f"A {'>' if a > 0 else '<'} 0")
    ax.set_xlabel("ρ = π_θ/π_old")
    ax.legend(fontsize=7)
axes[0].set_ylabel("min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)")
fig.suptitle("DA-1: clip-higher moves only the upper edge")
lesson.save(fig, "clip_higher.png")

# %% Step 5 — DA-2: dynamic sampling
G = 8
lesson.step("Dynamic sampling (动态采样, 对采样的数据做过滤)",
            "keep a group only if 0 < #correct < G",
            "a prompt the policy gets right with probability p: P(dropped) = p^G + (1 − p)^G",
            ids=["DA-2"])
g = lesson.generator(5)
n_groups = 20_000 if lesson.long else 4000
accuracies = [0.02, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98]
rows, dropped_share = [], []
for p in accuracies:
    groups = (torch.rand(n_groups, G, generator=g) < p).float()  # 0/1 verifier rewards, G replies per prompt
    keep = informative_groups(groups)
    share = 1 - float(keep.float().mean())
    dropped_share.append(share)
    zero_adv = float(group_advantages(groups[~keep]).abs().max()) if bool((~keep).any()) else 0.0
    theory = p**G + (1 - p) ** G
    rows.append([p, share, theory, 1 / (1 - share), zero_adv])
table(["accuracy p", "share dropped", "p^G + (1−p)^G", "groups sampled per kept group", "max |Â| of dropped"], rows,
      digits=3)
say(f"G = {G}, {n_groups} simulated groups per p. The dropped groups have Â = 0 for every reply: they add",
    "nothing to the gradient but, kept in the batch, would count in its average and shrink the update.",
    "On prompts the policy already solves (p → 1, the note's 全对) or cannot solve (p → 0), most groups are",
    "dropped, so DAPO samples more prompts until the batch is full of groups that teach something.", blank=True)
theory_gap = max(abs(r[1] - r[2]) for r in rows)
lesson.verdict("informative_groups drops p^G + (1−p)^G of the groups, all of them with Â = 0; most groups are dropped "
               "at p → 0 and p → 1",
               theory_gap < 0.03 and max(r[4] for r in rows) == 0 and min(rows[0][1], rows[-1][1]) > 0.5,
               f"largest |share − theory| {theory_gap:.3f} < 0.03; max |Â| of dropped {max(r[4] for r in rows):g}; "
               f"dropped at p = {accuracies[0]}: {rows[0][1]:.2f}, at p = {accuracies[-1]}: {rows[-1][1]:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
fine = torch.linspace(0, 1, 201, dtype=f64)
ax.plot(fine, fine**G + (1 - fine) ** G, label=f"p^G + (1−p)^G, G = {G}")
ax.scatter(accuracies, dropped_share, color="C1", zorder=3, label="informative_groups on simulated groups")
ax.set_xlabel("accuracy p of the policy on the prompt")
ax.set_ylabel("share of groups dropped")
ax.set_title("DA-2: dynamic sampling")
ax.legend(fontsize=8)
lesson.save(fig, "dynamic_sampling.png")

# %% Step 6 — DA-4: overlong reward shaping
L_MAX, L_CACHE = 20480, 4096
lesson.step("Overlong reward shaping (溢出奖励塑造, 根据条件截断)", ids=["DA-4"])
points = torch.tensor([8000, 16383, 16384, 16385, 17408, 18432, 20479, 20480, 20481, 24000])
penalty = overlong_penalty(points, L_MAX, L_CACHE)
soft = L_MAX - L_CACHE


def by_hand(n):
    return 0.0 if n <= soft else ((soft - n) / L_CACHE if n <= L_MAX else -1.0)


table(["|y| (tokens)", "overlong_penalty", "by hand", "zone"],
      [[int(n), float(v), by_hand(int(n)),
        "no penalty" if n <= soft else ("linear ramp" if n <= L_MAX else "over the limit")]
       for n, v in zip(points, penalty)], digits=5)
joints = overlong_penalty(torch.tensor([soft, soft + 1, L_MAX, L_MAX + 1]), L_MAX, L_CACHE).tolist()
say(f"L_max = {L_MAX}, L_cache = {L_CACHE} (DAPO's values): free up to {soft} tokens, then a ramp from 0 to",
    f"−1 over the last {L_CACHE}, and −1 beyond the limit. Continuous at both joints: {joints[0]:.5f} →",
    f"{joints[1]:.5f} from {soft} to {soft + 1} tokens, {joints[2]:.3f} → {joints[3]:.3f} from {L_MAX} to {L_MAX + 1}:",
    "one more token never costs more than 1/L_cache.", blank=True)
say("A reply cut off at the limit would otherwise get the verifier's 'wrong' for what may be a right but",
    "unfinished answer (reward noise); the ramp teaches the policy to finish before the limit instead.")
ramp_gap = max(abs(float(v) - by_hand(int(n))) for n, v in zip(points, penalty))
lesson.verdict("overlong_penalty matches the hand formula and is continuous at both joints: one more token never "
               "costs more than 1/L_cache",
               ramp_gap < 1e-9 and abs(joints[1] - joints[0]) <= 1 / L_CACHE + 1e-9
               and abs(joints[3] - joints[2]) <= 1 / L_CACHE + 1e-9,
               f"gap {ramp_gap:.0e}; steps at the joints {abs(joints[1] - joints[0]):.5f}, "
               f"{abs(joints[3] - joints[2]):.5f} ≤ 1/L_cache = {1 / L_CACHE:.5f}")

fig, ax = plt.subplots(figsize=(6, 3.4))
lengths_grid = torch.arange(12000, 24001, 16)
ax.plot(lengths_grid, overlong_penalty(lengths_grid, L_MAX, L_CACHE))
for x in (soft, L_MAX):
    ax.axvline(x, color="gray", lw=0.6)
ax.set_xlabel("reply length |y| (tokens)")
ax.set_ylabel("R_length(y), added to the reward")
ax.set_title(f"DA-4: overlong penalty, L_max = {L_MAX}, L_cache = {L_CACHE}")
lesson.save(fig, "overlong_penalty.png")

# %% Step 7 — DR-2: β = 0, and what it saves
lesson.step("Dropping the KL term (KL散度在这种场景下不必须)",
            "β = 0:   (1/G) Σ_i (1/|o_i|) Σ_t [min(ρÂ, clip(ρ)Â) − 0·k3]  needs no log π_ref at all",
            ids=["DR-2"])
# (a) in the loss: with β = 0 the reference's log-probs do not reach the gradient
lengths = torch.tensor([3, 5, 8, 2])
T = int(lengths.max())
mask = (torch.arange(T)[None, :] < lengths[:, None]).to(f64)
g = lesson.generator(7)
old = -torch.rand(4, T, generator=g, dtype=f64) * 2 * mask
adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=f64))[:, None].expand(4, T) * mask
grads = []
for ref in (old + 0.5 * torch.randn(4, T, generator=g, dtype=f64), old - 3.0):  # two very different π_ref
    for beta in (0.0, BETA):
        theta = (old + 0.1).clone().requires_grad_(True)
        obj = clipped_surrogate(theta, old, adv, clip_coef=EPS) - beta * kl_estimate(theta, ref, "k3")
        (grad,) = torch.autograd.grad(-reduce_loss(obj, mask, loss_reduction="seq_mean"), theta)
        grads.append(grad)
print(f"    The loss's gradient with β = 0 under two very different π_ref: max difference "
      f"{float((grads[0] - grads[2]).abs().max()):.1e}.")
print(f"    With β = {BETA}: max difference {float((grads[1] - grads[3]).abs().max()):.3f}. At β = 0 π_ref has no say "
      "(as in RM-4, lesson 10).")


# (b) in the update: core.ppo asks for reference log-probs only when the KL coefficient is positive
shift = torch.nn.Parameter(torch.zeros(()))  # log π_θ = log π_old + shift: one parameter, ρ = e^shift


def evaluate(mb):
    return Evaluation(mb["logprobs"] + shift, torch.zeros_like(mb["logprobs"]), None)


batch = {"actions": torch.zeros(4, T, dtype=torch.long), "logprobs": old.float(), "advantages": adv.float(),
         "returns": torch.zeros(4, T), "values": torch.zeros(4, T), "mask": mask.float()}
for coef in (0.0, BETA):
    config = PPOConfig(update_epochs=1, minibatch_size=4, norm_adv=False, vf_coef=0.0, loss_reduction="seq_mean",
                       ref_kl_coef=coef, max_grad_norm=None)
    try:
        ppo_update(evaluate, batch, torch.optim.SGD([shift], lr=0.1), config)
        print(f"    ppo_update, ref_kl_coef = {coef}: runs on a batch without 'ref_logprobs'")
    except ValueError as error:
        print(f"    ppo_update, ref_kl_coef = {coef}: ValueError: {error}")

# (c) what it saves in a rollout of the language model: the reference model's weights and forward pass
tok, task = CharTokenizer(), get_task("arithmetic")
torch.manual_seed(lesson.seed)
policy = GPT(model_config(ModelArgs(), tok)).eval()  # the pipeline's default size, untrained: only timing matters
reference = GPT(model_config(ModelArgs(), tok)).eval()
reference.load_state_dict(policy.state_dict())
rng = random.Random(lesson.seed)
prompts = [task.sample_prompt(rng) for _ in range(256)]
times = {"with π_ref": [], "without (β = 0)": []}
for _ in range(5 if lesson.long else 3):
    for name, ref_model in (("with π_ref", reference), ("without (β = 0)", None)):
        start = time.perf_counter()
        ro = collect_rollout(policy, ref_model, None, gold_scorer(task), task, tok, prompts, torch.device("cpu"),
                             torch.Generator().manual_seed(0))
        times[name].append(time.perf_counter() - start)
best = {name: min(v) for name, v in times.items()}
n_params = reference.num_params()
table(["rollout of 256 replies", "seconds (best of runs)", "reference weights in memory"],
      [["with π_ref", best["with π_ref"], f"{n_params:,} parameters, {4 * n_params / 1e6:.1f} MB (float32)"],
       ["without (β = 0)", best["without (β = 0)"], "none"]], digits=3)
saved = 1 - best["without (β = 0)"] / best["with π_ref"]
say("Without the KL term the rollout skips the reference's forward pass over every sampled reply",
    f"({saved:.0%} of this rollout's time; generation is the rest) and never loads a second copy of the",
    "weights: for a 7-billion-parameter policy in bf16, 14 GB of memory. With ref=None, collect_rollout",
    "fills the reference log-probs with the policy's own, so the KL is exactly 0.", blank=True)
lesson.verdict("Without π_ref the rollout is faster and its reference log-probs are the policy's own (KL exactly 0)",
               saved > 0 and float((ro.ref_logprobs - ro.logprobs).abs().max()) == 0,
               f"{saved:.0%} of the rollout's time saved; max |log π_ref − log π_θ| = "
               f"{float((ro.ref_logprobs - ro.logprobs).abs().max()):g}")
say("Dropping it fits long-reasoning RL with a verifier, where the policy is meant to move far from the SFT",
    "model. With a learned reward model it is the KL that keeps the policy where the reward model is right",
    "(lesson 10, step 5; the β = 0 run in llm/README.md).")

# %% Step 8 — GRPO, DAPO and Dr. GRPO on a bandit of answers with lengths
lesson.step("The length bias in training: a bandit of answers (跟长度有关,会使得模型倾向于生成更长的文本)",
            "four answers: right in 8 tokens, right in 32, wrong in 8, wrong in 32; reward 1 if right",
            "GRPO:     Â = (r − mean)/std,  seq_mean,           clip 0.2",
            "DAPO:     Â = (r − mean)/std,  token_mean,         clip 0.2/0.28, dynamic sampling",
            "Dr. GRPO: Â = r − mean,        constant (C = 32),  clip 0.2",
            "all: β = 0, one PPO epoch per batch of 16 groups × 8 answers",
            ids=["GR-3"])
CORRECT = torch.tensor([1.0, 1.0, 0.0, 0.0])
LENGTH = torch.tensor([8, 32, 8, 32])
BUDGET, GROUP, GROUPS = 32, 8, 16
ITERATIONS = 300
SEEDS = 5 if lesson.long else 1  # --long averages the policies of several runs


def train_bandit(mode, scale_by_std, dynamic, clip_coef_high, seed):
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(4, requires_grad=True)  # logits of the four answers: the first token of the reply
    optimizer = torch.optim.SGD([theta], lr=1.0)
    config = PPOConfig(clip_coef=0.2, clip_coef_high=clip_coef_high, update_epochs=1, minibatch_size=GROUP * GROUPS,
                       norm_adv=False, vf_coef=0.0, max_grad_norm=None, loss_reduction=mode,
                       loss_constant=float(BUDGET) if mode == "constant" else None)

    def evaluate(mb):
        first = F.log_softmax(theta, -1)[mb["actions"][:, 0]]  # log π(answer); the other tokens have log-prob 0
        logprobs = torch.cat([first[:, None], torch.zeros(len(first), BUDGET - 1)], 1)
        return Evaluation(logprobs, torch.zeros_like(logprobs), None)

    history, sampled = [], 0
    for _ in range(ITERATIONS):
        with torch.no_grad():
            pi = F.softmax(theta, -1)
        history.append(pi)
        groups = []
        while len(groups) < GROUPS:
            answers = torch.multinomial(pi, GROUP, replacement=True, generator=g)
            sampled += 1
            if dynamic and not bool(informative_groups(CORRECT[answers][None])[0]):
                continue  # DA-2: resample instead of keeping a group with Â = 0
            groups.append(answers)
        answers = torch.stack(groups)  # (groups, G)
        adv = group_advantages(CORRECT[answers], scale_by_std=scale_by_std).flatten()
        answers = answers.flatten()
        mask = (torch.arange(BUDGET)[None, :] < LENGTH[answers][:, None]).float()  # (N, 32)
        actions = torch.zeros(len(answers), BUDGET, dtype=torch.long)
        actions[:, 0] = answers
        old = torch.cat([pi[answers].log()[:, None], torch.zeros(len(answers), BUDGET - 1)], 1)
        batch = {"actions": actions, "logprobs": old, "advantages": adv[:, None] * mask, "mask": mask,
                 "returns": torch.zeros_like(mask), "values": torch.zeros_like(mask)}
        ppo_update(evaluate, batch, optimizer, config, generator=g)
    return torch.stack(history), sampled


methods = {
    "GRPO": ("seq_mean", True, False, None),
    "DAPO": ("token_mean", True, True, 0.28),
    "Dr. GRPO": ("constant", False, False, None),
}
results = {}
for name, spec in methods.items():
    runs = [train_bandit(*spec, seed=lesson.seed * 100 + 8 + k) for k in range(SEEDS)]
    results[name] = (torch.stack([h for h, _ in runs]).mean(0), sum(n for _, n in runs) // SEEDS)


def summary(pi):
    accuracy = pi[:, :2].sum(1)
    wrong_len = (pi[:, 2] * 8 + pi[:, 3] * 32) / pi[:, 2:].sum(1)
    right_len = (pi[:, 0] * 8 + pi[:, 1] * 32) / pi[:, :2].sum(1)
    return accuracy, wrong_len, right_len


rows = [[0, "all three", *[float(v[0]) for v in summary(results["GRPO"][0])]]]
for it in (ITERATIONS // 6, ITERATIONS // 3, ITERATIONS - 1):
    for name in methods:
        rows.append([it if name == "GRPO" else "", name, *[float(v[it]) for v in summary(results[name][0])]])
table(["iteration", "method", "P(right)", "E[length | wrong]", "E[length | right]"], rows, digits=2)
grpo_wrong = float(summary(results["GRPO"][0])[1][-1])
grpo_right = float(summary(results["GRPO"][0])[2][-1])
say("Expected lengths under π, in tokens (20 at the uniform start). Under GRPO the wrong answers drift",
    f"long ({grpo_wrong:.1f}) and the right ones short ({grpo_right:.1f}): the same Â, spread over 32 tokens instead",
    "of 8, pushes a long answer's choice a quarter as hard. Under DAPO's token-level loss and Dr. GRPO's",
    "constant the two wrong answers are pushed alike, and so are the two right ones: their lengths stay",
    "near 20, wandering only by sampling noise" + (f" (averaged over {SEEDS} runs here)." if SEEDS > 1 else "."),
    f"DAPO kept only informative groups: it sampled {results['DAPO'][1]} groups to fill {ITERATIONS * GROUPS} slots"
    + (" per run," if SEEDS > 1 else ","),
    "most of them late,",
    "when nearly every group of this one prompt is all right (a real batch would draw other prompts).",
    "Dr. GRPO learns more slowly at this step size: without the std and with C = 32 its steps are smaller,",
    "its direction no worse.", blank=True)
final = {name: [float(v[-1]) for v in summary(results[name][0])] for name in methods}  # P(right), lengths
lesson.verdict("Under GRPO the wrong answers drift long and the right ones short; under DAPO and Dr. GRPO their "
               "lengths stay near 20",
               final["GRPO"][1] > 22 and final["GRPO"][2] < 18
               and all(abs(final[name][k] - 20) < 1.5 for name in ("DAPO", "Dr. GRPO") for k in (1, 2)),
               f"GRPO: wrong {final['GRPO'][1]:.1f} > 22, right {final['GRPO'][2]:.1f} < 18; DAPO "
               f"{final['DAPO'][1]:.1f}/{final['DAPO'][2]:.1f}, Dr. GRPO {final['Dr. GRPO'][1]:.1f}/"
               f"{final['Dr. GRPO'][2]:.1f} within 20 ± 1.5")
lesson.verdict("Dr. GRPO learns more slowly at this step size; DAPO sampled more groups than it kept",
               final["Dr. GRPO"][0] < min(final["GRPO"][0], final["DAPO"][0])
               and results["DAPO"][1] > ITERATIONS * GROUPS,
               f"P(right) after {ITERATIONS}: Dr. GRPO {final['Dr. GRPO'][0]:.2f}, GRPO {final['GRPO'][0]:.2f}, DAPO "
               f"{final['DAPO'][0]:.2f}; DAPO sampled {results['DAPO'][1]} groups for {ITERATIONS * GROUPS} slots")
say("The real runs: python -m llm.pipeline --task arithmetic --algo grpo (or dapo, dr_grpo).")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for name in methods:
    accuracy, wrong_len, right_len = summary(results[name][0])
    axes[0].plot(accuracy, label=name)
    axes[1].plot(wrong_len, label=name)
    axes[2].plot(right_len, label=name)
titles = ("P(right answer)", "expected length of a wrong answer", "expected length of a right answer")
for ax, title in zip(axes, titles):
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)
fig.suptitle("GR-3 in training: GRPO's 1/|o_i| lengthens wrong answers; DAPO and Dr. GRPO do not")
lesson.save(fig, "length_bias_bandit.png")

# %%
lesson.done()
