"""Lesson 1 — Policy gradient: the objective, the log-derivative trick, and Monte Carlo error.

What it teaches
    The RLHF objective is an expected reward over prompts and replies. Its gradient can be
    written as an expectation too (the log-derivative trick), so it can be estimated from
    sampled replies alone, without enumerating every possible reply; the price is a Monte
    Carlo error that shrinks only as 1/√N.

Notes followed
    000_8217fa03f8526d4c.txt (RLHF objective): [基本架構] eq (1), the expected reward 期望值 over queries
        X ~ D; [只看 reward function] eq (2) the expectation written as a sum (解析函數), eq (3) its
        gradient, eq (4) the chain rule (微積分的 chain rule) ∇π = π ∇log π, and the policy
        gradient theorem (策略梯度定理); the Monte Carlo method (蒙特卡羅方法) converging as
        O(1/√N) where enumeration (窮舉法) is impossible.
    002_c297ee72da052b00.txt (PPO paper notes): "Policy Gradient": ∫∇π r = E[∇log π · r], and
        "采样不传梯度" (sampling passes no gradient), hence the surrogate E[log π · r].

Formula IDs: PG-1, PG-2, PG-3, PG-4, PG-5. Check the note: E1 (what D is).

Run:  python -m lessons run 1 [--step] [--long]

Deviations from the papers
    A prompt's whole reply is one action (note 002, "把一整个答案看作一个 action"), drawn from a
    table of logits (3 prompts × 4 replies) instead of a language model, so every expectation
    can also be computed exactly and compared. Rewards are a fixed table r(x, y).
"""

FORMULAS = ("PG-1", "PG-2", "PG-3", "PG-4", "PG-5")

# %% Setup: a toy "language model" with three prompts and four possible replies each
import math

import torch
import torch.nn.functional as F

from core.surrogates import score_function_surrogate
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
f64 = torch.float64  # exact comparisons need more than float32's 7 digits

PROMPTS = ["2+2=?", "capital of France?", "write a haiku"]
# r(x, y): the reward of reply y to prompt x (rows: prompts, columns: the four replies)
REWARD = torch.tensor([
    [1.0, 0.0, 0.2, 0.0],
    [0.0, 0.9, 0.1, 0.4],
    [0.3, 0.5, 0.8, 0.1],
], dtype=f64)
# D(x): how often each prompt is asked (the prompt distribution)
PROMPT_DIST = torch.tensor([0.5, 0.3, 0.2], dtype=f64)
# θ: one row of logits per prompt; π_θ(y|x) = softmax(θ[x])[y]
theta = torch.tensor([
    [0.5, 0.2, -0.3, 0.1],
    [0.0, 0.3, 0.4, -0.2],
    [-0.4, 0.1, 0.6, 0.2],
], dtype=f64, requires_grad=True)


def policy(logits):
    """π_θ(·|x) for every prompt: (3, 4), rows sum to 1."""
    return F.softmax(logits, dim=-1)


# %% Step 1 — PG-1: the objective is an average over prompts of per-prompt expected rewards
lesson.step("The RLHF objective J(θ), note 000 eq (1)", ids=["PG-1"])

# Reference computation: J(θ) is a definition that core has no function for (a real model cannot
# enumerate its replies); on this toy we can, and the samples below must agree with it.
probs = policy(theta).detach()
per_prompt = (probs * REWARD).sum(dim=-1)  # E_{y∼π}[r(x, y)] for each x, by enumeration
J_exact = float((PROMPT_DIST * per_prompt).sum())
table(["prompt x", "D(x)", "E_y[r(x,y)]", "D(x)·E_y[r]"],
      [[p, float(d), float(e), float(d * e)] for p, d, e in zip(PROMPTS, PROMPT_DIST, per_prompt)])
print(f"\n    J(θ) = Σ_x D(x) Σ_y π_θ(y|x) r(x,y) = {J_exact:.4f}   (enumeration)")

# The same number by sampling: draw a prompt from D, then a reply from π_θ(·|x), average r.
g = lesson.generator(1)
n = 200_000 if lesson.long else 40_000
xs = torch.multinomial(PROMPT_DIST, n, replacement=True, generator=g)  # x ∼ D
ys = torch.multinomial(probs[xs], 1, generator=g).squeeze(1)  # y ∼ π_θ(·|x)
sampled_rewards = REWARD[xs, ys]
J_sampled = float(sampled_rewards.mean())
stderr = float(sampled_rewards.std()) / math.sqrt(n)
print(f"    sampled mean of r over {n} pairs (x ∼ D, y ∼ π_θ) = {J_sampled:.4f} ± {stderr:.4f}")
share = torch.bincount(xs, minlength=3).double() / n
print(f"    share of each prompt among the samples: {[round(float(s), 3) for s in share]}  "
      f"(D = {PROMPT_DIST.tolist()})")

# Ask the hard prompt more often: J moves, because D says which prompts the model is asked.
skewed = torch.tensor([0.1, 0.1, 0.8], dtype=f64)
J_skewed = float((skewed * per_prompt).sum())
print(f"    the same policy under D' = {skewed.tolist()}: J = {J_skewed:.4f}")
share_gap = float((share - PROMPT_DIST).abs().max())
sample_gap = abs(J_sampled - J_exact)

lesson.check_note(
    "E1",
    evidence=[
        f"D is a probability distribution over prompts: D(x) ≥ 0 and Σ_x D(x) = {float(PROMPT_DIST.sum()):.1f}.",
        f"Drawing x ∼ D reproduces D's frequencies ({[round(float(s), 3) for s in share]}), and the sample "
        f"mean {J_sampled:.4f} ± {stderr:.4f} matches Σ_x D(x)·E_y[r] = {J_exact:.4f}.",
        f"Re-weighting the prompts (D' = {skewed.tolist()}) changes J to {J_skewed:.4f}: D decides which prompts "
        "count, it compares nothing. A divergence takes two distributions and returns one number ≥ 0.",
    ],
    conclusion="In X ∼ D, D is the distribution of prompts (the query set); the divergence of the notes "
               "is D_KL in the penalty term, a different object.",
    holds=(abs(float(PROMPT_DIST.sum()) - 1) < 1e-12 and bool((PROMPT_DIST >= 0).all()) and share_gap < 0.01
           and sample_gap < 3 * stderr and abs(J_skewed - J_exact) > 10 * stderr),
    measured=f"Σ D = {float(PROMPT_DIST.sum()):.1f}; sample shares within {share_gap:.3f} of D (< 0.01); "
             f"|sampled − exact J| = {sample_gap:.4f} < 3 std err = {3 * stderr:.4f}; "
             f"J under D' moves by {abs(J_skewed - J_exact):.4f} > 10 std err",
)

# %% Step 2 — PG-2: for one prompt, the expected reward is a finite sum; sampling approaches it
lesson.step("The expectation as a sum over replies, note 000 eq (2)", ids=["PG-2"])

x = 0  # the prompt "2+2=?"
pi_x = policy(theta)[x].detach()
expected = float((REWARD[x] * pi_x).sum())  # Σ_y r(x,y) π_θ(y|x): the definition, enumerated
print(f"    prompt {PROMPTS[x]!r}: π_θ(·|x) = {[round(float(p), 4) for p in pi_x]}")
print(f"    r(x,·) = {REWARD[x].tolist()}   →   Σ_y r π = {expected:.5f}\n")
g = lesson.generator(2)
rows = []
for n in (10, 100, 1_000, 10_000, 100_000):
    ys = torch.multinomial(pi_x, n, replacement=True, generator=g)
    mean = float(REWARD[x, ys].mean())
    rows.append([n, mean, mean - expected, float(REWARD[x, ys].std()) / math.sqrt(n)])
table(["N samples", "mean of r", "error", "σ/√N"], rows, digits=5)
print()
worst_z = max(abs(err) / se for _, _, err, se in rows)
lesson.verdict("The error is a random number of the size σ/√N (it shrinks, though not at every row)",
               worst_z < 3, f"largest |error|/(σ/√N) over the rows = {worst_z:.2f} < 3")
print("    Step 5 measures how fast it shrinks on average.")

# %% Step 3 — PG-3: the log-derivative trick, checked by autograd on both sides
lesson.step("The chain rule for log, note 000 eq (4)", ids=["PG-3"])

theta_x = theta[x].detach().clone().requires_grad_(True)
rows, worst = [], 0.0
for y in range(4):
    (grad_pi,) = torch.autograd.grad(F.softmax(theta_x, -1)[y], theta_x)  # ∇_θ π_θ(y|x)
    (grad_log_pi,) = torch.autograd.grad(F.log_softmax(theta_x, -1)[y], theta_x)  # ∇_θ log π_θ(y|x)
    pi_y = float(F.softmax(theta_x, -1)[y].detach())
    rhs = pi_y * grad_log_pi  # π ∇log π
    worst = max(worst, float((grad_pi - rhs).abs().max()))
    rows.append([f"y={y}", pi_y, str([round(float(v), 4) for v in grad_pi]),
                 str([round(float(v), 4) for v in rhs])])
table(["reply", "π(y|x)", "∇π(y|x)  (autograd)", "π·∇log π  (autograd)"], rows)
print(f"\n    largest difference over all replies and parameters: {worst:.1e}")
lesson.verdict("∇π = π·∇log π: the trick turns ∇π, which is not an expectation, into π·(∇log π), which is one",
               worst < 1e-12, f"largest difference {worst:.1e} < 1e-12")

# %% Step 4 — PG-4: the policy gradient is an expectation, so samples estimate it
lesson.step("The policy gradient theorem (策略梯度定理), notes 000 and 002", ids=["PG-4"])

# The exact gradient: autograd straight through the finite sum of step 2.
(exact_grad,) = torch.autograd.grad((REWARD[x] * policy(theta)[x]).sum(), theta)
exact_grad = exact_grad[x]
# The surrogate log π · stopgrad(r), averaged exactly over π (each reply weighted by its probability)
logp_x = F.log_softmax(theta, -1)[x]
(enumerated,) = torch.autograd.grad((pi_x * score_function_surrogate(logp_x, REWARD[x])).sum(), theta)
enumerated = enumerated[x]
# ... and averaged over N sampled replies: the Monte Carlo estimate a real model uses.
g = lesson.generator(3)
n = 4_000
ys = torch.multinomial(pi_x, n, replacement=True, generator=g)
logp_samples = F.log_softmax(theta, -1)[x, ys]  # log π_θ(y_i|x), differentiable
(sampled,) = torch.autograd.grad(score_function_surrogate(logp_samples, REWARD[x, ys]).mean(), theta)
sampled = sampled[x]
table(["θ[x, y]", "∇ Σ_y r π (exact)", "Σ_y π ∇(log π·r)", f"mean over N={n}"],
      [[f"y={y}", float(exact_grad[y]), float(enumerated[y]), float(sampled[y])] for y in range(4)])
surrogate_gap = float((exact_grad - enumerated).abs().max())
print(f"\n    exact vs surrogate averaged exactly: max difference {surrogate_gap:.1e}")
lesson.verdict("Averaged exactly over π, the surrogate log π · r has the exact gradient ∇ Σ_y r π",
               surrogate_gap < 1e-12, f"max difference {surrogate_gap:.1e} < 1e-12")

# Over prompts: ∇J = Σ_x D(x) ∇E[r|x] (note 000: "Ex~D[∇θ E[r|θ]] = ∇θ Ex~D[E[r|θ]]").
(grad_J,) = torch.autograd.grad((PROMPT_DIST * (policy(theta) * REWARD).sum(-1)).sum(), theta)
xs = torch.multinomial(PROMPT_DIST, 20_000, replacement=True, generator=g)
ys = torch.multinomial(policy(theta).detach()[xs], 1, generator=g).squeeze(1)
logp_pairs = F.log_softmax(theta, -1)[xs, ys]
(grad_J_sampled,) = torch.autograd.grad(score_function_surrogate(logp_pairs, REWARD[xs, ys]).mean(), theta)
pair_gap = float((grad_J - grad_J_sampled).abs().max())
print("    over all prompts: ∇J exact vs the mean over 20000 pairs (x ∼ D, y ∼ π): max difference "
      f"{pair_gap:.4f},")
print("    the Monte Carlo error.")
lesson.verdict("Sampled pairs estimate ∇J over all prompts up to Monte Carlo error",
               pair_gap < 0.01, f"max difference {pair_gap:.4f} < 0.01")
print("    The sampled pairs never needed the list of all replies: only log π of the ones drawn.")

# %% Step 5 — PG-5: the Monte Carlo error falls as 1/√N
lesson.step(
    "Monte Carlo error, note 000 (蒙特卡羅方法收斂速度為 O(1/√N))",
    "RMSE(N) = √E‖ĝ_N − ∇E[r]‖²  ∝  1/√N,   ĝ_N = (1/N) Σ_i r(x, y_i) ∇log π_θ(y_i|x)",
    ids=["PG-5"])


def repeated_estimates(n, repeats, g):
    """`repeats` independent N-sample score-function estimates of ∇E[r|x]: (repeats, 4).

    Each repeat gets its own copy of θ[x], so one backward pass returns every estimate.
    """
    thetas = theta[x].detach().repeat(repeats, 1).requires_grad_(True)  # (R, 4)
    ys = torch.multinomial(pi_x, repeats * n, replacement=True, generator=g).view(repeats, n)  # (R, N)
    logp = F.log_softmax(thetas, -1).gather(1, ys)  # (R, N)
    estimates = score_function_surrogate(logp, REWARD[x][ys]).mean(dim=1)  # (R,)
    (grads,) = torch.autograd.grad(estimates.sum(), thetas)
    return grads


g = lesson.generator(5)
repeats = 2_000 if lesson.long else 400
sizes = [4**k for k in range(1, 8 if lesson.long else 7)]  # each N is 4× the previous
rmse = []
for n in sizes:
    errors = repeated_estimates(n, repeats, g) - exact_grad
    rmse.append(float(errors.pow(2).sum(dim=1).mean().sqrt()))
rows = [[n, e, (rmse[i - 1] / e) if i else "", e * math.sqrt(n)] for i, (n, e) in enumerate(zip(sizes, rmse))]
table(["N", "RMSE", "RMSE(N/4)/RMSE(N)", "RMSE·√N"], rows)
print(f"\n    ({repeats} independent estimates per N.)")
ratios = [rmse[i - 1] / rmse[i] for i in range(1, len(rmse))]
flat = [e * math.sqrt(n) for n, e in zip(sizes, rmse)]
lesson.verdict("Four times the samples halve the error: the ratio column sits near 2 and RMSE·√N stays flat",
               all(1.6 < r < 2.5 for r in ratios) and max(flat) / min(flat) < 1.3,
               f"ratios {min(ratios):.2f}–{max(ratios):.2f} within (1.6, 2.5); "
               f"max/min of RMSE·√N = {max(flat) / min(flat):.2f} < 1.3")
print("    The error depends on N, not on how many replies")
vocab, length = 50_000, 100
print(f"    exist: a model with a {vocab}-token vocabulary and {length}-token replies has "
      f"10^{length * math.log10(vocab):.0f} of them (窮舉法不可行).")

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(sizes, rmse, "o-", label="RMSE of the score-function estimate")
ax.loglog(sizes, [rmse[0] * math.sqrt(sizes[0] / n) for n in sizes], "--", label="slope −½ (∝ 1/√N)")
ax.set_xlabel("N samples per estimate")
ax.set_ylabel("RMSE of ∇E[r] estimate")
ax.set_title("PG-5: Monte Carlo error falls as 1/√N")
ax.legend()
lesson.save(fig, "mc_error.png")

# %%
lesson.done()
