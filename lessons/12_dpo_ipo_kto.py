"""Lesson 12 — DPO, IPO and KTO: preference learning without a reward model or sampling.

What it teaches
    The optimum of lesson 10, π* ∝ π_ref exp(r/β), can be solved for the reward:
    r = β log π*/π_ref + β log Z. Put that implicit reward into Bradley–Terry and the unknown
    log Z cancels within a pair: DPO is the reward-model loss with β log π_θ/π_ref in place of
    R_φ, trained directly on the policy from fixed preference pairs, with no reward model and no
    sampling. On an enumerable toy its minimiser is exactly the RM-2 optimum of the reward behind
    the labels. Its loss is a log-sigmoid of a difference of log-ratios; no KL is computed. On a
    pair that is always labelled the same way the sigmoid never saturates and the margin grows
    without bound; IPO regresses the margin to 1/(2τ) instead. KTO needs only a thumbs-up or
    thumbs-down per reply, judged against a reference point clamped at zero, with weights that
    balance the two kinds.

Notes followed
    004_27c6b9375ccb306e.txt (PG to GRPO): "DPO(Direct Preference Optimization,直接偏好优化)":
        不再训练奖励模型 (no reward model), 不再使用强化学习 (no RL), choice and reject replies, the two
        models model_gen and model_gen_ref (one trained, one frozen), 4份概率 (four log-probabilities),
        pro_log_diff and pro_log_diff_ref, and "拿2份做差的数据,计算KL散度 … 以KL散度计算Loss"
        (erratum E7); "KTO": 前景理论 (prospect theory), 参考kl散度 (the reference KL), the value
        function, 加权 (weighting); "IPO": "DPO算法容易在人类偏好上过拟合,所以加了一个正则化τ"
        (DPO overfits preferences, IPO adds the regulariser τ).
    000_8217fa03f8526d4c.txt (RLHF objective): the opening line, DPO as the other main way
        (另一個主流方式) to fine-tune besides PPO.

Formula IDs: DP-1, DP-2, DP-3. Check the note: E7 (the DPO loss is not a KL).

Run:  python -m lessons run 12 [--step] [--long]
    The real runs are `python -m llm.pipeline --algo dpo`, `--algo ipo` and `--algo kto`
    (SFT, then the preference stage on the task's labelled pairs).

Deviations from the papers
    One prompt and six enumerable replies; log π(y|x) of a reply is one number (a language
    model sums its tokens' log-probabilities, IS-2). Preference pairs are drawn from π_ref and
    labelled by Bradley–Terry on a known reward with temperature 1. Step 2 minimises the exact
    expected loss over every pair with Adam, and also fits finite samples; step 4 follows plain
    gradient descent on one pair, to show the losses' own pull. KTO's reference point is given as a batch of mismatched
    log-ratios rather than built from a dataset; the weights follow the KTO paper's rule
    λ_D n_D ≈ λ_U n_U.
"""

FORMULAS = ("DP-1", "DP-2", "DP-3")

# %% Setup: six replies, a reward that labels the pairs, and the reference policy (the SFT model)
import math

import torch
import torch.nn.functional as F

from core.kl import categorical_kl, kl_regularized_optimum
from core.preference import (
    bradley_terry_loss,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    preference_margin,
)
from lessons._common import Lesson, plt, say, table

lesson = Lesson(__doc__)
f64 = torch.float64

REPLIES = [" great.", " good and fun.", " great, fun and lovely.", " fine.", " dull.", " bad, dull and awful."]
REWARD = torch.tensor([1.0, 2.0, 3.0, 0.0, -1.0, -3.0], dtype=f64)  # r(y): what the labellers go by
PI_REF = torch.tensor([0.2, 0.15, 0.05, 0.25, 0.25, 0.1], dtype=f64)
REF = PI_REF.log()  # log π_ref(y), the frozen model_gen_ref
K = len(REPLIES)
BETA = 1.0
# every ordered pair (i, j), i ≠ j: drawn from π_ref × π_ref, labelled "i ≻ j" with P = σ(r_i − r_j)
I, J = (t.flatten() for t in torch.meshgrid(torch.arange(K), torch.arange(K), indexing="ij"))
I, J = I[I != J], J[I != J]
PAIR_WEIGHT = PI_REF[I] * PI_REF[J] * torch.sigmoid(REWARD[I] - REWARD[J])  # P(the data holds "I chosen, J rejected")
PAIR_WEIGHT = PAIR_WEIGHT / PAIR_WEIGHT.sum()


def expected_dpo_loss(theta):
    """The DPO loss averaged over the whole (infinite) preference dataset: an exact sum over pairs."""
    logp = F.log_softmax(theta, -1)
    return (PAIR_WEIGHT * dpo_loss(logp[I], logp[J], REF[I], REF[J], BETA)).sum()


# %% Step 1 — DP-1: DPO is Bradley–Terry on implicit rewards
lesson.step("DPO's loss, from four log-probabilities (4份概率, note 004)", ids=["DP-1"])
# four pairs, each with log π_θ and log π_ref of the chosen (y_w) and the rejected (y_l) reply
pol_w = torch.tensor([-5.0, -4.0, -6.5, -3.0], dtype=f64, requires_grad=True)
pol_l = torch.tensor([-6.0, -4.0, -5.0, -9.0], dtype=f64, requires_grad=True)
ref_w = torch.tensor([-5.5, -4.0, -6.0, -4.0], dtype=f64)
ref_l = torch.tensor([-5.5, -4.0, -6.0, -6.0], dtype=f64)
beta = 0.5
loss = dpo_loss(pol_w, pol_l, ref_w, ref_l, beta)
as_bt = bradley_terry_loss(implicit_rewards(pol_w, ref_w, beta), implicit_rewards(pol_l, ref_l, beta))
h = preference_margin(pol_w, pol_l, ref_w, ref_l).detach()
grad_w, grad_l = torch.autograd.grad(loss.sum(), (pol_w, pol_l))
loss, as_bt = loss.detach(), as_bt.detach()
pro_log_diff, pro_log_diff_ref = (pol_w - pol_l).detach(), ref_w - ref_l
rows = []
for i in range(4):
    hi = float(h[i])
    rows.append([float(pro_log_diff[i]), float(pro_log_diff_ref[i]), hi, float(loss[i]), float(as_bt[i]),
                 -math.log(1 / (1 + math.exp(-beta * hi))), float(grad_w[i]), -beta / (1 + math.exp(beta * hi))])
table(["pro_log_diff", "pro_log_diff_ref", "h", "dpo_loss", "BT, implicit", "by hand", "∂L/∂log π(y_w)",
       "−βσ(−βh)"], rows)
say(f"∂L/∂log π(y_l) = {[round(float(v), 4) for v in grad_l]}: the opposite of ∂L/∂log π(y_w), pair by pair.",
    blank=True)
say(f"β = {beta}. pro_log_diff = log π_θ(y_w) − log π_θ(y_l), pro_log_diff_ref the same under π_ref, and",
    "h = pro_log_diff − pro_log_diff_ref. The loss is −log σ(βh), the Bradley–Terry loss of lesson 10 with",
    "the implicit rewards β log π_θ/π_ref as scores (column 'BT, implicit': bradley_terry_loss of",
    "implicit_rewards). Its gradient raises log π(y_w) and lowers log π(y_l) by the same weight βσ(−βh):",
    "large when the policy still ranks the pair the wrong way (row 3), small once it agrees with the label",
    "(row 4). Row 2: the policy is π_ref, h = 0, the loss is log 2.")
dpo_gap = max(max(abs(r[3] - r[4]), abs(r[3] - r[5]), abs(r[6] - r[7])) for r in rows)
lesson.verdict("dpo_loss is Bradley–Terry on the implicit rewards and equals the hand formula; ∂L/∂log π(y_l) is the "
               "opposite of ∂L/∂log π(y_w); the pull is largest on row 3, smallest on row 4; row 2 gives log 2",
               dpo_gap < 1e-12 and float((grad_w + grad_l).abs().max()) < 1e-12
               and abs(rows[2][6]) == max(abs(r[6]) for r in rows) and abs(rows[3][6]) == min(abs(r[6]) for r in rows)
               and abs(rows[1][3] - math.log(2)) < 1e-12,
               f"largest gap {dpo_gap:.0e}; |pull| row 3 {abs(rows[2][6]):.3f}, row 4 {abs(rows[3][6]):.3f}; row 2 "
               f"loss {rows[1][3]:.4f}")

# %% Step 2 — DP-1 on an enumerable toy: DPO's minimiser is the RM-2 optimum
lesson.step("DPO reaches π* ∝ π_ref·exp(r/β) without a reward model (不再训练奖励模型)",
            "min_θ E_{(y_w, y_l)}[−log σ(β[log π_θ/π_ref(y_w) − log π_θ/π_ref(y_l)])],  labels ∼ σ(r(y_w) − r(y_l))",
            "⇒  β log π_θ(y)/π_ref(y) = r(y) + const,  i.e.  π_θ = π* of lesson 10 (RM-2)",
            ids=["DP-1"])
star = kl_regularized_optimum(REF, REWARD, BETA).exp()
theta = REF.clone().requires_grad_(True)  # the trained model_gen starts as the reference
optimizer = torch.optim.Adam([theta], lr=0.05)
for _ in range(3000 if lesson.long else 1500):
    optimizer.zero_grad()
    expected_dpo_loss(theta).backward()
    optimizer.step()
pi_exact = F.softmax(theta.detach(), -1)
samples = {}
g = lesson.generator(2)
sizes = (300, 3000, 30_000, 300_000) if lesson.long else (300, 3000, 30_000)
for n in sizes:  # a finite preference dataset: n pairs from π_ref, labelled by Bradley–Terry
    a = torch.multinomial(PI_REF, n, replacement=True, generator=g)
    b = torch.multinomial(PI_REF, n, replacement=True, generator=g)
    a, b = a[a != b], b[a != b]
    a_wins = torch.rand(len(a), generator=g, dtype=f64) < torch.sigmoid(REWARD[a] - REWARD[b])
    chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    theta_n = REF.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta_n], lr=0.05)
    for _ in range(800):
        logp = F.log_softmax(theta_n, -1)
        loss = dpo_loss(logp[chosen], logp[rejected], REF[chosen], REF[rejected], BETA).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    samples[n] = F.softmax(theta_n.detach(), -1)
implicit = BETA * (pi_exact.log() - REF)  # β log π_θ/π_ref: the reward DPO has learned
print("    π_θ after DPO: on the exact expected loss, and on datasets of n sampled pairs:")
table(["reply", "r(y)", "π_ref", "π* (RM-2)", "DPO exact", *[f"n = {n}" for n in sizes], "β log π/π_ref − r"],
      [[repr(REPLIES[i]), float(REWARD[i]), float(PI_REF[i]), float(star[i]), float(pi_exact[i]),
        *[float(samples[n][i]) for n in sizes], float(implicit[i] - REWARD[i])] for i in range(K)], digits=4)
gap = float((pi_exact - star).abs().max())
log_z = float(torch.logsumexp(REF + REWARD / BETA, 0))
say(f"β = {BETA}. Exact expected loss: max |π_DPO − π*| = {gap:.1e}; the implicit reward equals r up to one",
    f"constant (−β log Z = {-BETA * log_z:.4f}), the offset Bradley–Terry cannot see (lesson 10). From finite",
    "data the minimiser is noisy and converges as the dataset grows: max |π − π*| =",
    ", ".join(f"{float((samples[n] - star).abs().max()):.3f}" for n in sizes) + f" for n = {sizes}.",
    "No reward model was trained and no reply was sampled from π_θ: the preference pairs and two models",
    "(model_gen, model_gen_ref) were enough.", blank=True)
offset = implicit - REWARD
finite = [float((samples[n] - star).abs().max()) for n in sizes]
offset_gap = float((offset + BETA * log_z).abs().max())
lesson.verdict("DPO's minimiser is π* (RM-2), its implicit reward r up to the constant −β log Z, and from finite data "
               "it converges as the dataset grows",
               gap < 1e-3 and offset_gap < 1e-3 and all(a > b for a, b in zip(finite, finite[1:])),
               f"max |π_DPO − π*| = {gap:.0e}; implicit reward − r within {offset_gap:.0e} of −β log Z; "
               f"finite-data gaps {' > '.join(f'{v:.3f}' for v in finite)}")

# %% Step 3 — check the note: does DPO compute a KL?
lesson.step("Check the note: what DPO's loss is (计算KL散度?)",
            "L_DPO = −log σ(β·(pro_log_diff − pro_log_diff_ref))   for one labelled pair",
            "KL[π_θ‖π_ref] = Σ_y π_θ(y) log π_θ(y)/π_ref(y)        over every reply y")
logp_exact = pi_exact.log()
kl_trained = float(categorical_kl(logp_exact, REF))
w, l_ = torch.tensor([1]), torch.tensor([4])  # the pair (" good and fun." ≻ " dull.")
loss_right = float(dpo_loss(logp_exact[w], logp_exact[l_], REF[w], REF[l_], BETA))
loss_swapped = float(dpo_loss(logp_exact[l_], logp_exact[w], REF[l_], REF[w], BETA))
loss_at_ref = float(dpo_loss(REF[w], REF[l_], REF[w], REF[l_], BETA))
table(["policy", "KL[π_θ‖π_ref]", "DPO loss of (y1 ≻ y4)", "DPO loss of (y4 ≻ y1)"],
      [["π_θ = π_ref", float(categorical_kl(REF, REF)), loss_at_ref, loss_at_ref],
       ["π_θ after DPO (step 2)", kl_trained, loss_right, loss_swapped]])
lesson.check_note(
    "E7",
    evidence=[
        f"At π_θ = π_ref the KL is 0 and the DPO loss is log 2 = {loss_at_ref:.4f} for every pair: a KL would "
        "be 0 there.",
        f"After training, swapping which reply of a pair was preferred changes the loss from {loss_right:.4f} to "
        f"{loss_swapped:.4f}, while KL[π_θ‖π_ref] = {kl_trained:.4f} cannot change: it does not know the labels.",
        "The loss reads four numbers, log π_θ and log π_ref of the two replies of the pair. A KL is an "
        f"expectation over all replies (here {K}, for a language model more than can be listed) or over samples "
        "from π_θ; DPO never samples.",
    ],
    conclusion="The DPO loss is −log σ(β[log π_θ/π_ref(y_w) − log π_θ/π_ref(y_l)]), a log-sigmoid of a difference "
               "of log-ratios (DP-1), i.e. Bradley–Terry on implicit rewards. The KL appears only in the "
               "derivation: it is the penalty of the RM-2 objective whose optimum DPO reaches.",
    holds=abs(loss_at_ref - math.log(2)) < 1e-12 and abs(loss_right - loss_swapped) > 0.01 and kl_trained > 0,
    measured=f"loss at π_ref {loss_at_ref:.4f} = log 2 where the KL is 0; swapping the labels moves the loss "
             f"{loss_right:.4f} → {loss_swapped:.4f} while the KL stays {kl_trained:.4f}",
)

# %% Step 4 — DP-2: IPO's fixed point against DPO's runaway margin
TAU = 0.25
lesson.step("IPO against DPO on a preference that never varies (DPO算法容易在人类偏好上过拟合)",
            "DPO: L = −log σ(βh), decreasing in h: it always pushes h up",
            "IPO: L = (h − 1/(2τ))², with its minimum at h = 1/(2τ)",
            ids=["DP-2"])
lr, checkpoints = 0.2, ([1, 10, 100, 1_000, 10_000, 30_000] if lesson.long else [1, 10, 100, 1_000, 5_000])
runs = {}
for name in ("DPO", "IPO"):
    theta = REF.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([theta], lr=lr)  # plain gradient descent shows the loss's own pull
    trace, margins = {}, []
    for step in range(1, checkpoints[-1] + 1):
        logp = F.log_softmax(theta, -1)
        if name == "DPO":
            loss = dpo_loss(logp[w], logp[l_], REF[w], REF[l_], BETA).sum()
        else:
            loss = ipo_loss(logp[w], logp[l_], REF[w], REF[l_], TAU).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logp = F.log_softmax(theta.detach(), -1)
        margins.append(float(preference_margin(logp[w], logp[l_], REF[w], REF[l_])))
        if step in checkpoints:
            trace[step] = (margins[-1], float(categorical_kl(logp, REF)), float(logp[l_].exp()))
    runs[name] = (trace, margins)
rows = []
for step in checkpoints:
    d, i = runs["DPO"][0][step], runs["IPO"][0][step]
    rows.append([step, d[0], d[1], d[2], i[0], i[1], i[2]])
table(["step", "DPO: h", "DPO: KL", "DPO: π(y_l)", "IPO: h", "IPO: KL", "IPO: π(y_l)"], rows)
say(f"One pair, y_w = {REPLIES[1]!r} ≻ y_l = {REPLIES[4]!r}, labelled the same way every time (a",
    f"deterministic preference). Gradient descent with step {lr}, β = {BETA}, τ = {TAU}. IPO settles at",
    f"h = 1/(2τ) = {1 / (2 * TAU):g} within ten steps. DPO's margin keeps growing, by about the same amount for",
    "every tenfold more steps (h ~ log t); π(y_l) heads to 0 and the KL to π_ref grows with it, however",
    "small the loss already is. Nothing in DPO's loss holds the policy near π_ref once the data is",
    "deterministic; IPO's τ does (larger τ, smaller margin).", blank=True)
ipo_h, dpo_h = [runs["IPO"][0][c][0] for c in checkpoints], [runs["DPO"][0][c][0] for c in checkpoints]
dpo_kl, dpo_pl = [runs["DPO"][0][c][1] for c in checkpoints], [runs["DPO"][0][c][2] for c in checkpoints]
lesson.verdict("IPO settles at h = 1/(2τ) within ten steps; DPO's margin and KL keep growing and π(y_l) keeps falling",
               all(abs(h - 1 / (2 * TAU)) < 0.01 for h in ipo_h[1:])
               and all(a < b for a, b in zip(dpo_h, dpo_h[1:])) and all(a < b for a, b in zip(dpo_kl, dpo_kl[1:]))
               and all(a > b for a, b in zip(dpo_pl, dpo_pl[1:])) and dpo_h[-1] > 2 / (2 * TAU),
               f"IPO h from step 10 on: {', '.join(f'{h:.3f}' for h in ipo_h[1:])} (target {1 / (2 * TAU):g}); "
               f"DPO h {', '.join(f'{h:.2f}' for h in dpo_h)}, KL {dpo_kl[0]:.3f} → {dpo_kl[-1]:.3f}")
# h ~ log t: the growth per tenfold more steps, from step 10 on (between checkpoints c_i < c_j: Δh / log10(c_j/c_i))
per_decade = [(dpo_h[j + 1] - dpo_h[j]) / math.log10(checkpoints[j + 1] / checkpoints[j])
              for j in range(1, len(checkpoints) - 1)]
lesson.verdict("DPO's margin grows by about the same amount for every tenfold more steps (h ~ log t)",
               max(per_decade) / min(per_decade) < 1.3,
               "growth per tenfold " + ", ".join(f"{v:.2f}" for v in per_decade) + ", max/min < 1.3")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
steps = range(1, checkpoints[-1] + 1)
for name in ("DPO", "IPO"):
    axes[0].plot(steps, runs[name][1], label=name)
axes[0].axhline(1 / (2 * TAU), ls="--", color="gray", label="1/(2τ)")
axes[0].set_xscale("log")
axes[0].set_xlabel("gradient step")
axes[0].set_ylabel("h = log-ratio margin")
axes[0].set_title("DP-2: the margin on a deterministic pair")
axes[0].legend(fontsize=8)
grid = torch.linspace(-2, 8, 201, dtype=f64)
zero = torch.zeros_like(grid)
axes[1].plot(grid, dpo_loss(grid, zero, zero, zero, BETA), label="DPO −log σ(βh)")
axes[1].plot(grid, ipo_loss(grid, zero, zero, zero, TAU), label="IPO (h − 1/(2τ))²")
axes[1].set_ylim(0, 4)
axes[1].set_xlabel("h")
axes[1].set_ylabel("loss")
axes[1].set_title("DPO never bottoms out; IPO has a minimum")
axes[1].legend(fontsize=8)
lesson.save(fig, "dpo_vs_ipo.png")

# %% Step 5 — DP-3: KTO's reference point, value function and weights
lesson.step("KTO: a thumbs-up or thumbs-down per reply (前景理论, note 004)", ids=["DP-3"])
# The reference point z₀: the mean log-ratio on mismatched pairs (prompt i with the reply of example j),
# clamped at zero and detached.
policy_mm = torch.tensor([-7.0, -6.5, -8.0, -5.0], dtype=f64, requires_grad=True)
rows = []
for name, ref_mm in (("policy above π_ref on average", torch.tensor([-7.5, -7.0, -8.2, -5.6], dtype=f64)),
                     ("policy below π_ref on average", torch.tensor([-6.5, -6.0, -7.9, -5.0], dtype=f64))):
    z0 = kto_reference_point(policy_mm, ref_mm)
    rows.append([name, float((policy_mm - ref_mm).detach().mean()), float(z0), z0.requires_grad])
table(["mismatched batch", "mean log π_θ/π_ref", "z₀ = max(0, ·)", "z₀ carries a gradient"], rows)
lesson.verdict("z₀ is the mean log-ratio clamped at 0, and it carries no gradient",
               abs(rows[0][2] - max(0.0, rows[0][1])) < 1e-12 and rows[1][2] == 0.0 and rows[1][1] < 0
               and not any(r[3] for r in rows),
               f"z₀ = {rows[0][2]:.3f} and {rows[1][2]:g} for means {rows[0][1]:.3f} and {rows[1][1]:.3f}; "
               "requires_grad False")
say("The mean log-ratio is a k1 estimate of KL[π_θ‖π_ref] (lesson 8), and k1 can be negative; a KL cannot,",
    "so z₀ is clamped at 0. It is a baseline for judging, not something to optimise: detached.", blank=True)
print()

z0, beta, lam_d, lam_u = 0.3, 1.0, 1.0, 1.5
log_ratio = torch.tensor([4.0, 0.3, -1.0, 2.0, 0.3, -3.0], dtype=f64, requires_grad=True)  # r_θ = log π_θ/π_ref
desirable = torch.tensor([True, True, True, False, False, False])
loss = kto_loss(log_ratio, torch.zeros_like(log_ratio), desirable, z0, beta, lam_d, lam_u)
(grad,) = torch.autograd.grad(loss.sum(), log_ratio)
loss, log_ratio = loss.detach(), log_ratio.detach()
rows = []
for i in range(6):
    r, good = float(log_ratio[i]), bool(desirable[i])
    v = lam_d / (1 + math.exp(-beta * (r - z0))) if good else lam_u / (1 + math.exp(-beta * (z0 - r)))
    rows.append(["desirable" if good else "undesirable", r, v, (lam_d if good else lam_u) - v, float(loss[i]),
                 float(grad[i])])
table(["label", "r_θ", "v by hand", "λ_y − v by hand", "kto_loss", "∂L/∂r_θ"], rows)
say(f"z₀ = {z0}, β = {beta}, λ_D = {lam_d}, λ_U = {lam_u}. A desirable reply gains when r_θ rises above z₀,",
    "an undesirable one when r_θ falls below it; the sigmoid saturates, so replies already far on the right",
    "side hardly pull any more (rows 1 and 6), as in prospect theory, where the value of gains and losses",
    "levels off.", blank=True)
kto_gap = max(abs(r[3] - r[4]) for r in rows)
pulls = [abs(r[5]) for r in rows]
lesson.verdict("kto_loss equals λ_y − v by hand; replies already far on the right side hardly pull any more (rows 1 "
               "and 6 pull least of their class)",
               kto_gap < 1e-12 and pulls[0] == min(pulls[:3]) and pulls[5] == min(pulls[3:]),
               f"largest gap {kto_gap:.0e}; |∂L/∂r_θ| " + ", ".join(f"{v:.3f}" for v in pulls))
print()

# The weights: with n_D desirable and n_U undesirable examples, each class pushes with n·λ·β·σ′.
n_d, n_u = 20, 80
labels = torch.tensor([True] * n_d + [False] * n_u)
rows = []
for lam_d_, lam_u_ in ((1.0, 1.0), (4.0, 1.0), (1.0, 0.25)):
    r_theta = torch.zeros(n_d + n_u, dtype=f64, requires_grad=True)  # at π_θ = π_ref: r_θ = 0, z₀ = 0
    (g_all,) = torch.autograd.grad(kto_loss(r_theta, torch.zeros_like(r_theta), labels, 0.0, beta, lam_d_, lam_u_)
                                   .sum(), r_theta)
    rows.append([lam_d_, lam_u_, (lam_d_ * n_d) / (lam_u_ * n_u), float(-g_all[:n_d].sum()), float(g_all[n_d:].sum())])
table(["λ_D", "λ_U", "λ_D n_D / (λ_U n_U)", "push up, desirable", "push down, undesirable"], rows, digits=3)
say(f"{n_d} desirable and {n_u} undesirable examples, at the start (r_θ = 0 = z₀). With equal weights the",
    "undesirable class pushes four times as hard; the KTO paper sets the weights so that λ_D n_D ≈ λ_U n_U",
    "(it keeps the ratio in [1, 4/3]), and the two kinds of feedback count alike.", blank=True)
lesson.verdict("With equal weights the undesirable class pushes four times as hard; with λ_D n_D = λ_U n_U the two "
               "push alike", abs(rows[0][4] / rows[0][3] - 4) < 1e-9
               and all(abs(r[3] - r[4]) < 1e-9 for r in rows[1:] if abs(r[2] - 1) < 1e-12),
               f"push ratio {rows[0][4] / rows[0][3]:.2f} at equal weights; balanced rows: "
               + ", ".join(f"{r[3]:.3f} vs {r[4]:.3f}" for r in rows[1:]))

fig, ax = plt.subplots(figsize=(6, 3.8))
grid = torch.linspace(-6, 6, 241, dtype=f64)
for good, label in ((True, f"desirable: λ_D σ(β(r_θ − z₀)), λ_D = {lam_d}"),
                    (False, f"undesirable: λ_U σ(β(z₀ − r_θ)), λ_U = {lam_u}")):
    flags = torch.full_like(grid, good, dtype=torch.bool)
    value = (lam_d if good else lam_u) - kto_loss(grid, torch.zeros_like(grid), flags, z0, beta, lam_d, lam_u)
    ax.plot(grid, value, label=label)
ax.axvline(z0, ls="--", color="gray", label=f"z₀ = {z0}")
ax.set_xlabel("r_θ = log π_θ(y|x)/π_ref(y|x)")
ax.set_ylabel("value v (the loss is λ_y − v)")
ax.set_title("DP-3: KTO's value function")
ax.legend(fontsize=7, loc="center right")
lesson.save(fig, "kto_value.png")
say("The same three losses train the small language model: python -m llm.pipeline --algo dpo (or ipo,",
    "kto).", blank=True)

# %%
lesson.done()
