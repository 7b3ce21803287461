"""Lesson 8 — Estimating KL from samples: k1, k2, k3.

What it teaches
    For a language model the exact KL between two policies is a sum over every possible reply,
    so RLHF estimates it from the sampled replies alone. Three per-sample estimators are in
    use. k1 = −log r is unbiased but noisy and often negative; k2 = ½(log r)² is never negative
    but biased; k3 = (r − 1) − log r is unbiased, never negative and low-variance. Used as a
    loss and differentiated, they do three different things, which is why PPO-RLHF puts k1 in
    the reward and GRPO puts k3 in the loss.

Notes followed
    000_8217fa03f8526d4c.txt (RLHF objective): [懲罰值] D_KL[π_θ ‖ π_ref], the penalty (懲罰項) that keeps
        the new model near the reference.
    002_c297ee72da052b00.txt (PPO paper notes): "至于 KL 散度如何计算": exact per token when the whole
        p(a_t|s_t) is known, a Monte Carlo approximation otherwise.
    004_27c6b9375ccb306e.txt (PG to GRPO): "KL散度三种估计": "k1有偏有方差 k2有偏低方差 k3无偏低方差",
        "PPO是使用KL1训练的,GRPO是使用KL3训练的".

Formula IDs: KL-1, KL-2, KL-3. Check the note: E8 (k1 is unbiased).

Run:  python -m lessons run 8 [--step] [--long]

Deviations from the papers
    Five-outcome categoricals stand in for a token distribution, so every expectation can be
    enumerated. The estimators follow John Schulman's note "Approximating KL Divergence" (2020),
    with x ∼ q and r = p(x)/q(x) estimating KL[q‖p].
"""

FORMULAS = ("KL-1", "KL-2", "KL-3")

# %% Setup: a sampling distribution q and a reference p over five outcomes
import math

import torch
import torch.nn.functional as F

from core.kl import categorical_kl, kl_estimate
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
f64 = torch.float64
ESTIMATORS = ("k1", "k2", "k3")

q_logits = torch.tensor([1.0, 0.2, -0.5, 0.8, -1.5], dtype=f64)  # q: the policy that samples
pairs = {  # p: a reference close to q, and one far from it
    "near": q_logits + torch.tensor([0.1, -0.1, 0.05, 0.0, -0.05], dtype=f64),
    "far": torch.tensor([0.1, 1.0, 0.3, -1.0, 0.4], dtype=f64),
}

# %% Step 1 — KL-1: the exact KL of two categoricals
lesson.step("KL divergence of two categoricals (KL散度), notes 000 and 002", ids=["KL-1"])
q = F.softmax(q_logits, -1)
rows = []
for name, p_logits in pairs.items():
    p = F.softmax(p_logits, -1)
    loop = sum(float(q[i]) * (math.log(float(q[i])) - math.log(float(p[i]))) for i in range(5))
    rows.append([name, loop, float(categorical_kl(q_logits, p_logits)), float(categorical_kl(p_logits, q_logits))])
table(["p", "Σ_x q (log q − log p) (loop)", "categorical_kl(q, p)", "categorical_kl(p, q)"], rows, digits=6)
self_kl = float(categorical_kl(q_logits, q_logits))
print(f"\n    KL[q‖q] = {self_kl:.1e}.")
loop_gap = max(abs(row[1] - row[2]) for row in rows)
asymmetry = {row[0]: abs(row[2] - row[3]) / row[2] for row in rows}
lesson.verdict("categorical_kl equals the loop; KL ≥ 0 (0 for q against itself), and KL[q‖p] ≠ KL[p‖q]: the order "
               "matters (far from q; near q the two agree to second order)",
               loop_gap < 1e-12 and self_kl < 1e-12 and min(min(r[2], r[3]) for r in rows) > 0
               and asymmetry["far"] > 0.05 and asymmetry["near"] < 0.05,
               f"loop vs core {loop_gap:.0e}; KL[q‖q] = {self_kl:.0e}; |KL[q‖p] − KL[p‖q]|/KL[q‖p] far "
               f"{asymmetry['far']:.0%} > 5%, near {asymmetry['near']:.1%} < 5%")
print("    Notes 000/002 penalise KL[π_θ ‖ π_ref]; the PPO paper's penalty is KL[π_old ‖ π_θ] (lesson 5).")

# %% Step 2 — KL-2: three estimators from samples of q
lesson.step("Three estimators from samples x ∼ q (note 004)", ids=["KL-2"])
g = lesson.generator(2)
n = 1_000_000 if lesson.long else 200_000
samples = torch.multinomial(q, n, replacement=True, generator=g)
logq_all = F.log_softmax(q_logits, -1)
rows, estimates = [], {}
for name, p_logits in pairs.items():
    kl = float(categorical_kl(q_logits, p_logits))
    logp_all = F.log_softmax(p_logits, -1)
    for k in ESTIMATORS:
        values = kl_estimate(logq_all[samples], logp_all[samples], k)  # one number per sample
        estimates[name, k] = values
        exact_mean = float((q * kl_estimate(logq_all, logp_all, k)).sum())  # E_q[k] by enumeration
        rows.append([name if k == "k1" else "", kl if k == "k1" else "", k, exact_mean / kl,
                     float(values.mean()) / kl, float(values.std()) / kl / math.sqrt(n), float(values.std()) / kl,
                     float((values < 0).to(f64).mean())])
table(["p", "true KL", "estimator", "E[k]/KL (exact)", "mean/KL (sampled)", "± s.e.", "std/KL", "share < 0"], rows)
print(f"\n    {n} samples of q. E[k]/KL = 1 means unbiased.")
by = {(name, k): row for name in pairs for k, row in zip(ESTIMATORS, rows[3 * list(pairs).index(name):][:3])}
k2_bias = {name: abs(by[name, "k2"][3] - 1) for name in pairs}
lesson.verdict("k1 and k3 are unbiased; k2's bias grows as p moves away from q",
               all(abs(by[name, k][3] - 1) < 1e-10 for name in pairs for k in ("k1", "k3"))
               and k2_bias["far"] > 10 * k2_bias["near"] > 0,
               f"E[k]/KL of k1 and k3 = 1 within 1e-10; k2's |E[k]/KL − 1|: near {k2_bias['near']:.4f}, "
               f"far {k2_bias['far']:.3f} (> 10×)")
lesson.verdict("k1's spread is the largest of the three, many times the KL itself near q, and a large share of its "
               "samples are negative; k3 is never negative and, near q, almost as tight as k2",
               all(by[name, "k1"][6] > max(by[name, "k2"][6], by[name, "k3"][6]) for name in pairs)
               and by["near", "k1"][6] > 10 and min(by[name, "k1"][7] for name in pairs) > 0.2
               and max(by[name, "k3"][7] for name in pairs) == 0 and by["near", "k3"][6] < 1.2 * by["near", "k2"][6],
               f"k1: std/KL {by['near', 'k1'][6]:.1f} near (> 10), {by['far', 'k1'][6]:.2f} far (the largest), "
               f"share < 0 ≥ {min(by[name, 'k1'][7] for name in pairs):.0%} > 20%; k3: share < 0 = 0; near q std/KL "
               f"k3 {by['near', 'k3'][6]:.3f} < 1.2 × k2's {by['near', 'k2'][6]:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, name in zip(axes, pairs):
    for k in ESTIMATORS:
        values = estimates[name, k][:20_000]
        ax.hist(values.numpy(), bins=60, histtype="step", density=True, label=k)
    ax.axvline(float(categorical_kl(q_logits, pairs[name])), color="k", ls="--", label="true KL")
    ax.set_title(f"p {name} q")
    ax.set_xlabel("per-sample estimate")
    ax.legend(fontsize=8)
fig.suptitle("KL-2: per-sample values of k1, k2, k3")
lesson.save(fig, "estimators.png")

# %% Step 3 — check the note: is k1 biased?
lesson.step("Check the note on k1 (k1有偏有方差)", "E_{x∼q}[k1] = Σ_x q(x)(log q(x) − log p(x)) = KL[q‖p]")
far = pairs["far"]
kl_far = float(categorical_kl(q_logits, far))
k1_far = estimates["far", "k1"]
exact_k1 = float((q * kl_estimate(logq_all, F.log_softmax(far, -1), "k1")).sum())
stderr = float(k1_far.std()) / math.sqrt(n)
lesson.check_note(
    "E8",
    evidence=[
        f"By enumeration E_q[k1] = {exact_k1:.6f} and KL[q‖p] = {kl_far:.6f}: identical, since k1 = log q − log p "
        "and the KL is its expectation by definition.",
        f"Sampled mean of k1 over {n} draws: {float(k1_far.mean()):.5f} ± {stderr:.5f} (1 s.e.).",
        f"What hurts: std/KL = {float(k1_far.std()) / kl_far:.2f} and {float((k1_far < 0).to(f64).mean()):.0%} "
        f"of the samples are negative "
        f"(k3: std/KL = {float(estimates['far', 'k3'].std()) / kl_far:.2f}, none negative).",
    ],
    conclusion="k1 is unbiased; its variance and its negative values are its problems. k2 is the biased one "
               "(low variance), k3 is unbiased with low variance.",
    holds=(abs(exact_k1 - kl_far) < 1e-12 and abs(float(k1_far.mean()) - kl_far) < 3 * stderr
           and k2_bias["far"] > 0.01 and float(estimates["far", "k3"].std()) < float(k1_far.std())
           and float((k1_far < 0).to(f64).mean()) > 0 and float((estimates["far", "k3"] < 0).to(f64).mean()) == 0),
    measured=f"|E_q[k1] − KL| = {abs(exact_k1 - kl_far):.0e}; sampled mean within "
             f"{abs(float(k1_far.mean()) - kl_far) / stderr:.1f} s.e. (< 3); k2's relative bias far from q "
             f"{k2_bias['far']:.3f} > 0.01; std of k3 {float(estimates['far', 'k3'].std()):.3f} < k1's "
             f"{float(k1_far.std()):.3f}",
)

# %% Step 4 — KL-3: differentiate them as losses
lesson.step("The estimators as losses: what their gradients follow", ids=["KL-3"])
theta = q_logits.clone().requires_grad_(True)  # q = softmax(θ) is the policy being trained
logp_ref = F.log_softmax(far, -1)


def expected_gradient(kind):
    """E_{x∼q}[∇_θ k(x)]: every outcome weighted by q(x), which itself is not differentiated."""
    logq = F.log_softmax(theta, -1)
    (grad,) = torch.autograd.grad((logq.exp().detach() * kl_estimate(logq, logp_ref, kind)).sum(), theta)
    return grad


(grad_reverse,) = torch.autograd.grad(categorical_kl(theta, far), theta)  # ∇ KL[q‖p]
(grad_forward,) = torch.autograd.grad(categorical_kl(far, theta), theta)  # ∇ KL[p‖q]
rows = [["∇ KL[q‖p] (reverse)", *grad_reverse.tolist()], ["∇ KL[p‖q] (forward)", *grad_forward.tolist()]]
for kind in ESTIMATORS:
    rows.append([f"E[∇{kind}]", *expected_gradient(kind).tolist()])
# The same with sampled outcomes: the mean gradient of the loss over 20000 samples.
draws = torch.multinomial(q, 20_000, replacement=True, generator=lesson.generator(4))
logq = F.log_softmax(theta, -1)[draws]
(sampled_k3,) = torch.autograd.grad(kl_estimate(logq, logp_ref[draws], "k3").mean(), theta)
rows.append(["mean ∇k3 over 20000 samples", *sampled_k3.tolist()])
table(["", "θ0", "θ1", "θ2", "θ3", "θ4"], rows)
print()
grads = {kind: expected_gradient(kind) for kind in ESTIMATORS}
lesson.verdict("E[∇k1] = 0: the score function has zero mean, so k1 as a loss does nothing on average",
               float(grads["k1"].abs().max()) < 1e-12, f"max |E[∇k1]| = {float(grads['k1'].abs().max()):.0e}")
k2_gap, k3_gap = float((grads["k2"] - grad_reverse).abs().max()), float((grads["k3"] - grad_forward).abs().max())
sampled_gap = float((sampled_k3 - grad_forward).abs().max())
lesson.verdict("E[∇k2] = ∇KL[q‖p], the reverse KL the notes write. E[∇k3] = ∇KL[p‖q], the forward KL (and the mean "
               "over samples follows it)",
               k2_gap < 1e-12 and k3_gap < 1e-12 and sampled_gap < 0.05 * float(grad_forward.abs().max()),
               f"gaps {k2_gap:.0e}, {k3_gap:.0e}; sampled ∇k3 within {sampled_gap:.4f} (< 5% of max |∇KL[p‖q]|)")
print("    PPO for RLHF uses k1 as a number inside the reward, r_t = −β·k1 (no gradient flows through it;")
print("    its expectation is the KL the notes penalise). GRPO puts β·k3 in the loss and follows the")
print("    gradient of the forward KL. That is what note 004 means by")
print("    \"PPO是使用KL1训练的, GRPO是使用KL3训练的\" (PPO trains with k1, GRPO with k3).")

# %%
lesson.done()
