"""Lesson 6 — The clipped objective, and why the min.

What it teaches
    PPO-Clip replaces TRPO's constraint by clipping the ratio ρ to [1 − ε, 1 + ε] inside a min
    with the unclipped ρA. The min makes the objective a pessimistic bound of ρA: once the ratio
    has moved beyond the range in the direction the advantage wants, that sample stops pulling;
    in every other case its gradient is the ordinary one, so a step in the wrong direction can
    always be undone. Clipping alone, without the min, would also freeze those wrong-direction
    cases. The full PPO loss adds a value loss and an entropy bonus.

Notes followed
    003_0b6419f90971e6ff.txt (PPO derived): "约束" (constraint): clip(ρ, 1−ε, 1+ε),
        "由于clip在区间外不产生梯度" (clip passes no gradient outside the range); "最终的目标函数" (the
        final objective): the case analysis 合理 / 不合理 (sensible / not sensible) for A > 0 and A ≤ 0,
        with and without the min ("已经clip了为什么还要取min").
    002_c297ee72da052b00.txt (PPO paper notes): "Clipped Surrogate Objective", L^CLIP = E[min(r_t A_t,
        clip(r_t, 1−ε, 1+ε) A_t)] (the note's missing figure clip.png is drawn in step 2).
    001_883a2028b23f6fee.txt (PPO for LLMs): L_PPO = E[min(r_θ A, clip(r_θ, 1−ε, 1+ε) A)], ε ≈ 0.1–0.2,
        and R̂ as the value target (价值学习的回报/目标).

Formula IDs: CL-1, CL-2, CL-3, CL-4.

Run:  python -m lessons run 6 [--step] [--long]

Deviations from the papers
    Gradients are taken with respect to log π of the sampled action (for a softmax policy the
    chain rule to θ multiplies every case by the same nonzero factor, so zero stays zero).
    Step 5 trains a tabular bandit with `core.ppo.ppo_update`; "without clipping" is the same
    update with the KL-penalty objective at β = 0, i.e. plain E[ρA]. Value clipping (CL-4's
    option) follows the PPO reference code, not the paper.
"""

FORMULAS = ("CL-1", "CL-2", "CL-3", "CL-4")

# %% Setup
import math

import torch
import torch.nn.functional as F

from core.advantages import gae
from core.kl import categorical_kl
from core.losses import clipped_surrogate, entropy_from_logits, value_loss
from core.ppo import Evaluation, PPOConfig, ppo_update
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
torch.manual_seed(lesson.seed)
EPS = 0.2


def clip_objective(ratio, advantage, use_min=True):
    """clipped_surrogate evaluated at a given ratio (log π_old = 0, log π = log ρ)."""
    ratio = torch.as_tensor(ratio, dtype=torch.float64)
    advantage = torch.as_tensor(advantage, dtype=torch.float64)
    return clipped_surrogate(ratio.log(), torch.zeros_like(ratio), advantage, clip_coef=EPS, use_min=use_min)


# %% Step 1 — CL-1: the clipped surrogate on hand cases
lesson.step("The clipped surrogate objective, notes 001–003", ids=["CL-1"])

rows = []
for advantage in (1.0, -1.0):
    for ratio in (0.5, 0.9, 1.0, 1.1, 1.5):
        unclipped = ratio * advantage
        clipped = min(max(ratio, 1 - EPS), 1 + EPS) * advantage
        rows.append([ratio, advantage, unclipped, clipped, min(unclipped, clipped),
                     float(clip_objective(ratio, advantage))])
table(["ρ", "A", "ρA", "clip(ρ)·A", "min (by hand)", "clipped_surrogate"], rows)
print(f"\n    ε = {EPS}.")
hand_gap = max(abs(row[4] - row[5]) for row in rows)
inside_gap = max(abs(row[5] - row[2]) for row in rows if 1 - EPS <= row[0] <= 1 + EPS)
lesson.verdict("Inside [1−ε, 1+ε] nothing changes; outside, the min keeps whichever term is smaller "
               "(core's clipped_surrogate equals the hand computation)",
               hand_gap < 1e-12 and inside_gap < 1e-12,
               f"|clipped_surrogate − min by hand| ≤ {hand_gap:.0e}; inside the range |L − ρA| ≤ {inside_gap:.0e}")

# %% Step 2 — CL-2: why the min (已经clip了为什么还要取min)
lesson.step("Why the min: the six cases of note 003", ids=["CL-2"])

cases = [  # (A, ρ, what note 003 says about clip alone)
    (+1.0, 1.5, "ρ ≥ 1+ε, already raised: stop (合理)"),
    (+1.0, 1.0, "inside: normal update (合理)"),
    (+1.0, 0.5, "ρ ≤ 1−ε, should rise (clip alone: 不合理)"),
    (-1.0, 0.5, "ρ ≤ 1−ε, already lowered: stop (合理)"),
    (-1.0, 1.0, "inside: normal update (合理)"),
    (-1.0, 1.5, "ρ ≥ 1+ε, should fall (clip alone: 不合理)"),
]
rows = []
for advantage, ratio, verdict in cases:
    grads = []
    for use_min in (True, False):
        log_ratio = torch.tensor(ratio, dtype=torch.float64).log().requires_grad_(True)
        objective = clipped_surrogate(log_ratio, torch.zeros(()), torch.tensor(advantage), clip_coef=EPS,
                                      use_min=use_min)
        (grad,) = torch.autograd.grad(objective, log_ratio)  # ∂L/∂log π(a|s)
        grads.append(float(grad))
    rows.append([f"{'A>0' if advantage > 0 else 'A<0'}, ρ={ratio}", grads[0], grads[1], verdict])
table(["case", "∂/∂log π, with min", "clip only", "note 003"], rows, digits=2)
print()
zero_with_min = [row[0] for row in rows if row[1] == 0]
zero_clip_only = [row[0] for row in rows if row[2] == 0]
wrong_way = [row[0] for row, (_, _, note) in zip(rows, cases) if "不合理" in note]
lesson.verdict("With the min the gradient is zero only in the two cases where the ratio already moved the way A "
               "wants beyond the range", zero_with_min == ["A>0, ρ=1.5", "A<0, ρ=0.5"],
               f"zero gradient with the min in: {', '.join(zero_with_min)}")
lesson.verdict("Clip alone also zeroes the two 不合理 cases, where the policy moved the wrong way and should be "
               "pulled back: the min restores the ρA gradient there",
               set(wrong_way) <= set(zero_clip_only)
               and all(abs(row[1] - cases[i][1] * cases[i][0]) < 1e-12  # ∂(ρA)/∂log π = ρA
                       for i, row in enumerate(rows) if row[0] in wrong_way),
               f"zero gradient with clip only in: {', '.join(zero_clip_only)}; with the min there: "
               + ", ".join(f"{row[1]:.2f} (= ρA = {cases[i][1] * cases[i][0]:.2f})"
                           for i, row in enumerate(rows) if row[0] in wrong_way))

rho = torch.linspace(0.3, 1.8, 301, dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
for ax, advantage in zip(axes, (1.0, -1.0)):
    ax.plot(rho, rho * advantage, ":", color="gray", label="ρA")
    ax.plot(rho, clip_objective(rho, torch.full_like(rho, advantage), use_min=False), "--", label="clip(ρ)·A")
    ax.plot(rho, clip_objective(rho, torch.full_like(rho, advantage)), lw=2.5, label="min(ρA, clip(ρ)A) = L^CLIP")
    for edge in (1 - EPS, 1 + EPS):
        ax.axvline(edge, color="k", lw=0.5)
    ax.set_title(f"A {'>' if advantage > 0 else '<'} 0")
    ax.set_xlabel("ρ = π_θ/π_old")
    ax.legend(fontsize=8)
axes[0].set_ylabel("objective per sample")
fig.suptitle("CL-1/CL-2: the clipped objective (PPO paper, Figure 1)")
lesson.save(fig, "clipped_objective.png")

# %% Step 3 — CL-3: a pessimistic bound that agrees to first order at ρ = 1
lesson.step("L^CLIP is a lower bound of ρA", ids=["CL-3"])

ratios = torch.linspace(0.05, 4.0, 400, dtype=torch.float64)
advantages = torch.linspace(-3.0, 3.0, 121, dtype=torch.float64)
R, A = torch.meshgrid(ratios, advantages, indexing="ij")
gap = clip_objective(R, A) - R * A  # L^CLIP − ρA on a 400 × 121 grid
print(f"    max over the grid of (L^CLIP − ρA) = {float(gap.max()):.1e}   (never above 0)")
print(f"    share of the grid where L^CLIP < ρA: {float((gap < 0).double().mean()):.0%}")
log_ratio = torch.zeros(121, dtype=torch.float64, requires_grad=True)  # ρ = 1 for every advantage
clip_at_one = clipped_surrogate(log_ratio, torch.zeros(121, dtype=torch.float64), advantages, clip_coef=EPS)
(grad_clip,) = torch.autograd.grad(clip_at_one.sum(), log_ratio)
value_gap = float((clip_at_one.detach() - advantages).abs().max())
grad_gap = float((grad_clip - advantages).abs().max())
print(f"    at ρ = 1: max |L^CLIP − ρA| = {value_gap:.1e},  max |∇L^CLIP − ∇(ρA)| = {grad_gap:.1e}")
lesson.verdict("L^CLIP never exceeds ρA (a lower bound), and agrees with it to first order at ρ = 1",
               float(gap.max()) <= 1e-12 and value_gap < 1e-12 and grad_gap < 1e-12,
               f"max (L^CLIP − ρA) = {float(gap.max()):.1e} ≤ 1e-12 (rounding); at ρ = 1 value and gradient gaps "
               f"{value_gap:.0e}, {grad_gap:.0e} < 1e-12")
print("    So the first gradient step of each PPO update is the plain policy gradient (IS-1); only after the")
print("    ratios move does the bound start to bite.")

# %% Step 4 — CL-4: the full loss, on a hand case
lesson.step(
    "The full PPO loss (policy and value trained together, notes 001 and 004)",
    "loss = −L^CLIP + c₁·½(V_ψ(s) − V^targ)² − c₂ H[π_θ(·|s)]  (the ½ of the reference code: c₁ = 0.5 as CleanRL)",
    "value clipping: ½·max((V − V^targ)², (V_old + clip(V − V_old, −ε_v, ε_v) − V^targ)²)",
    ids=["CL-4"])

logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], dtype=torch.float64, requires_grad=True)
actions = torch.tensor([0, 2])
old_logp = torch.tensor([-0.6, -1.2], dtype=torch.float64)
adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
values = torch.tensor([0.4, 1.5], dtype=torch.float64, requires_grad=True)
old_values = torch.tensor([0.5, 1.0], dtype=torch.float64)
returns = torch.tensor([1.0, 2.0], dtype=torch.float64)
c1, c2, eps_v = 0.5, 0.01, 0.2
logp = F.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
policy_term = clipped_surrogate(logp, old_logp, adv, clip_coef=EPS).mean()
value_term = value_loss(values, returns, old_values, vf_clip_coef=eps_v).mean()
entropy_term = entropy_from_logits(logits).mean()
loss = -policy_term + c1 * value_term - c2 * entropy_term

# By hand, in plain floats
hand_policy, hand_value, hand_entropy = 0.0, 0.0, 0.0
for i in range(2):
    row = logits[i].tolist()
    log_z = math.log(sum(math.exp(z) for z in row))
    lp = [z - log_z for z in row]
    ratio = math.exp(lp[int(actions[i])] - float(old_logp[i]))
    a = float(adv[i])
    hand_policy += min(ratio * a, min(max(ratio, 1 - EPS), 1 + EPS) * a) / 2
    v, v_old, target = float(values[i].detach()), float(old_values[i]), float(returns[i])
    v_clipped = v_old + min(max(v - v_old, -eps_v), eps_v)
    hand_value += 0.5 * max((v - target) ** 2, (v_clipped - target) ** 2) / 2  # ½·max, averaged over 2
    hand_entropy += -sum(math.exp(x) * x for x in lp) / 2
hand_loss = -hand_policy + c1 * hand_value - c2 * hand_entropy
table(["term", "core.losses", "by hand"],
      [["L^CLIP (mean)", float(policy_term.detach()), hand_policy],
       ["½(V − V^targ)², clipped (mean)", float(value_term.detach()), hand_value],
       ["H[π] (mean)", float(entropy_term.detach()), hand_entropy],
       ["loss", float(loss.detach()), hand_loss]], digits=6)
(grad_values,) = torch.autograd.grad(loss, values)
print()
loss_gap = max(abs(float(policy_term.detach()) - hand_policy), abs(float(value_term.detach()) - hand_value),
               abs(float(entropy_term.detach()) - hand_entropy), abs(float(loss.detach()) - hand_loss))
lesson.verdict("core.losses computes every term of the loss as the hand computation does", loss_gap < 1e-12,
               f"largest difference {loss_gap:.0e} < 1e-12")
print("\n    Value clipping, sample 2: V_old = 1.0, V = 1.5, V^targ = 2.0. Unclipped error (1.5 − 2)² = 0.25; the")
print("    clipped prediction V_old + 0.2 = 1.2 gives (1.2 − 2)² = 0.64; the max keeps 0.64, whose gradient in V")
print(f"    is 0: ∂loss/∂V = {[round(x, 4) for x in grad_values.tolist()]}.")
lesson.verdict("The critic has already moved more than ε_v from its old value in this update, so this sample stops "
               "pushing it, as the policy's clip does for ρ",
               float(grad_values[1]) == 0.0 and float(grad_values[0]) != 0,
               f"∂loss/∂V of sample 2 = {float(grad_values[1]):g}, of sample 1 = {float(grad_values[0]):.4f}")

# %% Step 5 — many epochs on one batch: clipping keeps the policy near π_old
lesson.step(
    "Several epochs on one batch, with and without the clip",
    "K passes over the same samples; π_old stays fixed, π_θ moves with every minibatch step",
    ids=["CL-1", "CL-4"])

N_CONTEXTS, N_ACTIONS, BATCH = 16, 5, 512
rewards_table = torch.randn(N_CONTEXTS, N_ACTIONS, generator=lesson.generator(5))


class BanditPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(N_CONTEXTS, N_ACTIONS))
        self.values = torch.nn.Parameter(torch.zeros(N_CONTEXTS))

    def evaluate(self, minibatch):
        logp_all = F.log_softmax(self.logits[minibatch["obs"]], -1)
        logp = logp_all.gather(1, minibatch["actions"][:, None]).squeeze(1)
        return Evaluation(logp, -(logp_all.exp() * logp_all).sum(-1), self.values[minibatch["obs"]])


g = lesson.generator(6)
contexts = torch.randint(0, N_CONTEXTS, (BATCH,), generator=g)
sampled_actions = torch.multinomial(torch.full((BATCH, N_ACTIONS), 1.0 / N_ACTIONS), 1, generator=g).squeeze(1)
sampled_rewards = rewards_table[contexts, sampled_actions] + 0.5 * torch.randn(BATCH, generator=g)
advantages = gae(sampled_rewards[:, None], torch.zeros(BATCH, 1), gamma=1.0, gae_lambda=1.0).squeeze(1)
batch = {"obs": contexts, "actions": sampled_actions, "logprobs": torch.full((BATCH,), -torch.log(torch.tensor(5.0))),
         "values": torch.zeros(BATCH), "advantages": advantages, "returns": advantages}
epochs = 30 if lesson.long else 15
traces = {}
for name, objective in (("clip (ε = 0.2)", "clip"), ("no clip: E[ρA]", "ratio")):
    policy = BanditPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    config = PPOConfig(objective=objective, clip_coef=EPS, update_epochs=1, minibatch_size=128)
    traces[name] = {"kl": [], "outside": []}
    for _ in range(epochs):  # one call = one epoch over the same batch with the same π_old
        ppo_update(policy.evaluate, batch, optimizer, config, generator=g)
        with torch.no_grad():
            kl = categorical_kl(torch.zeros(N_CONTEXTS, N_ACTIONS), policy.logits).mean()  # KL[π_old ‖ π_θ]
            ratio = policy.evaluate(batch).logprobs.exp() * N_ACTIONS
        traces[name]["kl"].append(float(kl))
        traces[name]["outside"].append(float(((ratio < 1 - EPS) | (ratio > 1 + EPS)).float().mean()))
rows = [[epoch + 1, *(traces[name][key][epoch] for name in traces for key in ("kl", "outside"))]
        for epoch in (0, 1, 2, 4, 9, epochs - 1)]
table(["epoch", "KL, clip", "ρ outside, clip", "KL, no clip", "ρ outside, no clip"], rows)
print()
clip_kl, free_kl = traces["clip (ε = 0.2)"]["kl"], traces["no clip: E[ρA]"]["kl"]
lesson.verdict("Without the clip, every extra pass over the same samples pushes π_θ further from the π_old that "
               "produced them", all(a < b for a, b in zip(free_kl, free_kl[1:])),
               f"KL without the clip rises at every epoch: {free_kl[0]:.4f} → {free_kl[-1]:.3f}")
lesson.verdict("With it, a sample stops pulling once its ratio leaves [1−ε, 1+ε] in the direction of its advantage, "
               "so the policy's movement slows down: a trust region without TRPO's machinery",
               clip_kl[-1] < free_kl[-1] / 3 and clip_kl[-1] - clip_kl[len(clip_kl) // 2] < clip_kl[len(clip_kl) // 2],
               f"KL after {epochs} epochs {clip_kl[-1]:.4f} with the clip < {free_kl[-1]:.3f}/3 without; in the "
               f"second half of the epochs it grows by {clip_kl[-1] - clip_kl[len(clip_kl) // 2]:.4f}, less than the "
               f"{clip_kl[len(clip_kl) // 2]:.4f} of the first half")
lesson.verdict("It is a soft limit: ratios still drift past the range through the other samples of a context",
               traces["clip (ε = 0.2)"]["outside"][-1] > 0,
               f"share of ratios outside [1−ε, 1+ε] after {epochs} epochs with the clip: "
               f"{traces['clip (ε = 0.2)']['outside'][-1]:.3f} > 0")

fig, ax = plt.subplots(figsize=(6, 3.8))
for name, trace in traces.items():
    ax.plot(range(1, epochs + 1), trace["kl"], "o-", label=name)
ax.set_xlabel("epoch over the same batch")
ax.set_ylabel("mean KL[π_old ‖ π_θ]")
ax.set_title("CL-1: clipping slows the policy's drift from π_old")
ax.legend()
lesson.save(fig, "epochs_kl.png")

# %%
lesson.done()
