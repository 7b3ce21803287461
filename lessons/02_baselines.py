"""Lesson 2 — Baselines, Q and V, and the six choices of Ψ.

What it teaches
    Subtracting a baseline that does not depend on the action leaves the policy gradient
    unchanged and can shrink its variance enormously. On a small Markov decision process with
    exact values, the gradient is an average of ∇log π · Q over the states the policy visits,
    and six different weights Ψ_t give the same expected gradient with very different variances.

Notes followed
    002_c297ee72da052b00.txt (PPO paper notes): "Policy Gradient": replacing r by the advantage A_t
        (优势), "减去一个常数不变", with lower variance (方差更小).
    003_0b6419f90971e6ff.txt (PPO derived): "策略梯度算法": ∇J = E_s E_a[∇log π(a|s) Q(s,a)],
        J = E_s[V(s)], V(s) = E_a[Q(s,a)]; "优势函数" (advantage function) A = Q − V.
    004_27c6b9375ccb306e.txt (PG to GRPO): "Actor-Critic": the six ways (方法1–6) to weight ∇log π;
        方法4 (Q) is the seed of actor–critic (actor-critic的雏形), 方法5 subtracts a baseline
        (减去一个基线函数), 方法6 uses Q = r + γV (时序差分 / TD residual).

Formula IDs: PG-6, PG-7, PG-8, AD-1. Check the note: E4 (which baselines are allowed).

Run:  python -m lessons run 2 [--step] [--long]

Deviations from the papers
    Tabular softmax policies on toy problems, so exact values come from a linear solve or a
    backward recursion. Note 003 writes the state average as E_{s∈S}; the policy gradient
    theorem needs the discounted visitation d^π(s) = Σ_t γ^t P(s_t = s) (Sutton et al. 2000),
    and step 2 shows that a uniform average over S gives a different vector. The six Ψ follow
    Schulman et al. 2016 (GAE, §2) on a finite-horizon problem with γ = 1, where V_t and Q_t
    depend on the time step.
"""

FORMULAS = ("PG-6", "PG-7", "PG-8", "AD-1")

# %% Setup
import math

import torch
import torch.nn.functional as F

from core.returns import discounted_returns, td_residuals
from core.surrogates import score_function_surrogate
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
f64 = torch.float64


def per_sample_gradients(logits, actions, weights):
    """∇_θ[log π(a_i) · w_i] for every sample i separately: (N, K) for a single-state policy.

    Each sample gets its own copy of the logits, so one backward pass returns every row.
    """
    copies = logits.detach().repeat(len(actions), 1).requires_grad_(True)  # (N, K)
    logp = F.log_softmax(copies, -1).gather(1, actions[:, None]).squeeze(1)  # (N,)
    (grads,) = torch.autograd.grad(score_function_surrogate(logp, weights).sum(), copies)
    return grads


# %% Step 1 — PG-6: a baseline that ignores the action changes nothing in expectation
lesson.step("Baselines (基线): subtract b from the reward, keep the gradient", ids=["PG-6"])

# One prompt, five replies, every reward large and positive: without a baseline every sampled
# reply is pushed up, and only the small differences between rewards carry information.
reward = torch.tensor([10.0, 10.5, 11.0, 9.0, 10.2], dtype=f64)
logits = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.0], dtype=f64, requires_grad=True)
probs = F.softmax(logits, -1).detach()
logp = F.log_softmax(logits, -1)
(exact,) = torch.autograd.grad((F.softmax(logits, -1) * reward).sum(), logits)  # ∇ Σ_y π r


def expected_gradient(weights):
    """E_{y∼π}[w(y) ∇log π(y)], exactly: every reply weighted by its probability."""
    (grad,) = torch.autograd.grad((probs * score_function_surrogate(logp, weights)).sum(), logits, retain_graph=True)
    return grad


def total_variance(weights):
    """trace Cov[w(y) ∇log π(y)] under y ∼ π, exactly, summed over the parameters."""
    per_reply = per_sample_gradients(logits, torch.arange(5), weights)  # (5, K): one row per reply
    mean = (probs[:, None] * per_reply).sum(0)
    return float((probs[:, None] * (per_reply - mean) ** 2).sum())


constant_zero = expected_gradient(torch.full((5,), 7.0, dtype=f64))
print(f"    E[b ∇log π] with b = 7 (a constant), enumerated: max |·| = {float(constant_zero.abs().max()):.1e}\n")

mean_reward = float((probs * reward).sum())
# The variance-minimising constant: b* = E[r ‖∇log π‖²] / E[‖∇log π‖²]
score_sq = per_sample_gradients(logits, torch.arange(5), torch.ones(5, dtype=f64)).pow(2).sum(1)
b_star = float((probs * reward * score_sq).sum() / (probs * score_sq).sum())
rows = []
for name, b in [("none (b = 0)", 0.0), ("b = 5", 5.0), ("b = E[r]", mean_reward), ("b* (best constant)", b_star)]:
    weights = reward - b
    bias = float((expected_gradient(weights) - exact).abs().max())
    rows.append([name, b, bias, total_variance(weights)])
table(["baseline", "b", "max |E[ĝ] − ∇J|", "Var[ĝ] (one sample)"], rows)
print()
worst_bias = max(row[2] for row in rows)
lesson.verdict("Every constant baseline leaves the expected gradient unchanged", worst_bias < 1e-10,
               f"largest max |E[ĝ] − ∇J| over the four rows = {worst_bias:.1e} < 1e-10")
lesson.verdict("b* has the lowest variance of the four, and every baseline here lowers it below b = 0",
               rows[3][3] <= min(row[3] for row in rows) and all(row[3] < rows[0][3] for row in rows[1:]),
               f"Var[ĝ]: {', '.join(f'{row[3]:.2f}' for row in rows)}")

# Sampling agrees: 2000 single-sample estimates, with and without the baseline.
print()
g = lesson.generator(1)
ys = torch.multinomial(probs, 2000, replacement=True, generator=g)
for name, b in [("b = 0", 0.0), ("b = E[r]", mean_reward)]:
    grads = per_sample_gradients(logits, ys, reward[ys] - b)
    print(f"    2000 one-sample estimates, {name:>8}: mean {[round(float(v), 3) for v in grads.mean(0)]}, "
          f"variance {float(grads.var(0).sum()):.2f}")
print(f"    exact gradient:                         {[round(float(v), 3) for v in exact]}")
sampled_var = {}
for name, b in [("b = 0", 0.0), ("b = E[r]", mean_reward)]:
    sampled_var[name] = float(per_sample_gradients(logits, ys, reward[ys] - b).var(0).sum())
lesson.verdict("Sampling agrees: the baseline b = E[r] cuts the sampled variance",
               sampled_var["b = E[r]"] < sampled_var["b = 0"] / 2,
               f"{sampled_var['b = E[r]']:.2f} < {sampled_var['b = 0']:.2f} / 2")

# A baseline that depends on the action is not allowed: it moves the expectation.
b_of_action = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=f64) * 3.0  # only reply 0 gets a "baseline"
bias_action = float((expected_gradient(reward - b_of_action) - exact).abs().max())
# Several prompts, one baseline per prompt b(x) (a value function): still no bias.
prompt_logits = torch.tensor([[0.3, -0.2, 0.1, 0.4, 0.0], [1.0, 0.0, -1.0, 0.5, 0.2]], dtype=f64,
                             requires_grad=True)
prompt_reward = torch.stack([reward, reward - 4.0])  # (2 prompts, 5 replies)
prompt_probs = F.softmax(prompt_logits, -1).detach()
b_of_prompt = (prompt_probs * prompt_reward).sum(-1, keepdim=True)  # b(x) = V(x) = E_y[r(x, y)]
(with_b,) = torch.autograd.grad(
    (prompt_probs * score_function_surrogate(F.log_softmax(prompt_logits, -1), prompt_reward - b_of_prompt)).sum(),
    prompt_logits)
(without_b,) = torch.autograd.grad((F.softmax(prompt_logits, -1) * prompt_reward).sum(), prompt_logits)
bias_prompt = float((with_b - without_b).abs().max())
print(f"\n    per-prompt baseline b(x) = V(x) over two prompts: max |E[ĝ] − ∇J| = {bias_prompt:.1e}")
print(f"    action-dependent b(y) = 3·[y = 0]:               max |E[ĝ] − ∇J| = {bias_action:.3f}")

lesson.check_note(
    "E4",
    evidence=[
        f"A constant b leaves E[ĝ] equal to ∇J (difference {rows[1][2]:.0e}); so does a baseline per prompt "
        f"b(x) = V(x) ({bias_prompt:.0e}), because Σ_y π(y|x) ∇log π(y|x) = ∇Σ_y π(y|x) = ∇1 = 0 for each x.",
        f"A baseline that depends on the reply, b(y) = 3·[y = 0], biases the gradient by {bias_action:.3f}.",
        f"The variance of one sample falls from {rows[0][3]:.2f} (no baseline) to {rows[3][3]:.2f} (b*).",
    ],
    conclusion="Subtracting b keeps the gradient for any b that does not depend on the action: a constant, "
               "or any function of the state or prompt, such as V(s). Not for b(a).",
    holds=rows[1][2] < 1e-10 and bias_prompt < 1e-10 and bias_action > 0.01 and rows[3][3] < rows[0][3],
    measured=f"bias {rows[1][2]:.0e} (constant) and {bias_prompt:.0e} (b(x)) < 1e-10; b(y) biases by "
             f"{bias_action:.3f} > 0.01; variance {rows[0][3]:.2f} → {rows[3][3]:.2f}",
)

# %% Step 2 — PG-7 and AD-1: the policy gradient on a small MDP with exact Q and V
lesson.step(
    "The policy gradient theorem on a Markov decision process, note 003",
    "∇J = E_{s∼d^π} E_{a∼π}[∇log π(a|s) Q(s,a)],   J = E_{s₀}[V(s₀)],   V(s) = E_{a∼π}[Q(s,a)]",
    "A(s,a) = Q(s,a) − V(s)                          (优势函数, AD-1)",
    ids=["PG-7", "AD-1"])

gamma = 0.9
# 3 states × 2 actions. P[s, a, s']: transition probabilities; R[s, a]: expected reward.
P = torch.tensor([
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]],
    [[0.3, 0.4, 0.3], [0.0, 0.2, 0.8]],
    [[0.5, 0.0, 0.5], [0.9, 0.1, 0.0]],
], dtype=f64)
R = torch.tensor([[1.0, 0.0], [0.0, 0.5], [-1.0, 2.0]], dtype=f64)
start = torch.tensor([1.0, 0.0, 0.0], dtype=f64)  # every episode starts in state 0
theta = torch.tensor([[0.2, -0.1], [0.0, 0.3], [0.5, -0.4]], dtype=f64, requires_grad=True)


def values_of(theta):
    """Exact V^π, Q^π of the tabular softmax policy π = softmax(θ) (Bellman equations, solved).

    A reference computation for display: a real agent never has these (lesson 7 estimates them).
    """
    pi = F.softmax(theta, -1)  # (S, A)
    P_pi = torch.einsum("sa,sat->st", pi, P)  # state-to-state transitions under π
    R_pi = (pi * R).sum(-1)
    V = torch.linalg.solve(torch.eye(3, dtype=f64) - gamma * P_pi, R_pi)  # V = R_π + γ P_π V
    Q = R + gamma * torch.einsum("sat,t->sa", P, V)  # Q = R + γ Σ_s' P V
    return pi, P_pi, V, Q


pi, P_pi, V, Q = values_of(theta)
J = start @ V
(grad_exact,) = torch.autograd.grad(J, theta)  # autograd straight through the linear solve
J, pi, P_pi, V, Q = (t.detach() for t in (J, pi, P_pi, V, Q))
A = Q - V[:, None]  # AD-1 by its definition, from the exact Q and V
table(["state", "π(a₀|s)", "π(a₁|s)", "Q(s,a₀)", "Q(s,a₁)", "V(s)", "Σ_a π Q", "A(s,a₀)", "A(s,a₁)", "Σ_a π A"],
      [[s, pi[s, 0], pi[s, 1], Q[s, 0], Q[s, 1], V[s], (pi[s] * Q[s]).sum(), A[s, 0], A[s, 1], (pi[s] * A[s]).sum()]
       for s in range(3)], digits=3)
print()

# d^π(s) = Σ_t γ^t P(s_t = s): how much (discounted) time the policy spends in each state.
visitation = torch.linalg.solve((torch.eye(3, dtype=f64) - gamma * P_pi).T, start)
logp = F.log_softmax(theta, -1)


def theorem_gradient(state_weights, psi):
    """Σ_s w(s) Σ_a π(a|s) ∇log π(a|s) Ψ(s, a), with the surrogate log π · stopgrad(Ψ)."""
    (grad,) = torch.autograd.grad((state_weights[:, None] * pi * score_function_surrogate(logp, psi)).sum(), theta,
                                  retain_graph=True)
    return grad


rows = [["autograd through V (exact)", *grad_exact.flatten().tolist(), 0.0]]
for name, weights, psi in [("d^π(s), Ψ = Q", visitation, Q), ("d^π(s), Ψ = A = Q − V", visitation, A),
                           ("uniform over S, Ψ = Q", torch.full((3,), 1 / (1 - gamma) / 3, dtype=f64), Q)]:
    grad = theorem_gradient(weights, psi)
    rows.append([name, *grad.flatten().tolist(), float((grad - grad_exact).abs().max())])
table(["∇J computed as", "θ00", "θ01", "θ10", "θ11", "θ20", "θ21", "max error"], rows, digits=4)
print(f"\n    J = V(s₀) = {float(J):.4f};  d^π = {[round(v, 3) for v in visitation.tolist()]} "
      f"(sums to 1/(1−γ) = {1 / (1 - gamma):.0f})")
pi_A = float((pi * A).sum(-1).abs().max())
lesson.verdict("Σ_a π(a|s) A(s,a) = 0 in every state (AD-1: A is Q minus its π-average V)", pi_A < 1e-12,
               f"max |Σ_a π A| = {pi_A:.1e} < 1e-12")
lesson.verdict("With the visitation weights the theorem is exact, with Q or with A (V(s) is a baseline, step 1)",
               max(rows[1][-1], rows[2][-1]) < 1e-10, f"max errors {rows[1][-1]:.1e}, {rows[2][-1]:.1e} < 1e-10")
lesson.verdict("Averaging uniformly over S, as E_{s∈S} might suggest, gives a different vector",
               rows[3][-1] > 1e-3, f"max error {rows[3][-1]:.3f} > 1e-3")

# %% Step 3 — PG-8: six weights Ψ_t, one expected gradient, six variances
lesson.step(
    "The six choices of Ψ_t, note 004 (方法1–6)",
    "ĝ = Σ_t Ψ_t ∇log π(a_t|s_t), with Ψ_t one of:",
    "  1  Σ_{t'=0}^{H−1} r_{t'}                total return of the episode",
    "  2  Σ_{t'≥t} r_{t'}                      reward-to-go (what happens after the action)",
    "  3  Σ_{t'≥t} r_{t'} − V_t(s_t)           reward-to-go minus a baseline",
    "  4  Q_t(s_t, a_t)                        action value (actor-critic的雏形)",
    "  5  A_t(s_t, a_t) = Q_t − V_t            advantage (减去基线)",
    "  6  r_t + V_{t+1}(s_{t+1}) − V_t(s_t)    TD residual (Q = r + γV, here γ = 1)",
    ids=["PG-8"])

H = 4  # steps per episode; γ = 1 as in the GAE paper's list
P2 = torch.tensor([[[0.8, 0.2], [0.3, 0.7]], [[0.6, 0.4], [0.1, 0.9]]], dtype=f64)  # P2[s, a, s']
R2 = torch.tensor([[1.0, 0.0], [0.2, 1.5]], dtype=f64)  # mean reward R2[s, a]
noise = 1.0  # rewards are R2[s, a] + noise · N(0, 1)
theta2 = torch.tensor([[0.3, -0.3], [-0.2, 0.4]], dtype=f64, requires_grad=True)


def finite_horizon_values(theta):
    """V_t(s), Q_t(s, a) for t = 0..H−1 by the backward recursion; V_H = 0. Shapes (H+1, S), (H, S, A)."""
    pi = F.softmax(theta, -1)
    V = [torch.zeros(2, dtype=f64)]
    Qs = []
    for _ in range(H):
        Q_t = R2 + P2 @ V[0]  # Q_t(s,a) = R(s,a) + Σ_s' P(s'|s,a) V_{t+1}(s')
        Qs.insert(0, Q_t)
        V.insert(0, (pi * Q_t).sum(-1))
    return torch.stack(V), torch.stack(Qs)


V_t, Q_t = finite_horizon_values(theta2)
(grad_exact2,) = torch.autograd.grad(V_t[0, 0], theta2)  # J = V_0(s₀ = 0)
V_t, Q_t = V_t.detach(), Q_t.detach()

# Sample M episodes at once: states, actions, rewards, each (M, H).
g = lesson.generator(3)
M = 100_000 if lesson.long else 20_000
probs2 = F.softmax(theta2, -1).detach()
states = torch.zeros(M, H + 1, dtype=torch.long)
actions = torch.zeros(M, H, dtype=torch.long)
rewards = torch.zeros(M, H, dtype=f64)
for t in range(H):
    actions[:, t] = torch.multinomial(probs2[states[:, t]], 1, generator=g).squeeze(1)
    rewards[:, t] = R2[states[:, t], actions[:, t]] + noise * torch.randn(M, generator=g, dtype=f64)
    states[:, t + 1] = torch.multinomial(P2[states[:, t], actions[:, t]], 1, generator=g).squeeze(1)

steps = torch.arange(H)
values_now = V_t[steps, states[:, :H]]  # V_t(s_t), (M, H)
values_next = V_t[steps + 1, states[:, 1:]]  # V_{t+1}(s_{t+1}); V_H = 0 at the end
q_now = Q_t[steps, states[:, :H], actions]  # Q_t(s_t, a_t)
reward_to_go = discounted_returns(rewards, gamma=1.0)  # Σ_{t'≥t} r_{t'}, (M, H)
psis = {
    "1 total return": reward_to_go[:, :1].expand(M, H),
    "2 reward-to-go": reward_to_go,
    "3 reward-to-go − V": reward_to_go - values_now,
    "4 Q": q_now,
    "5 A = Q − V": q_now - values_now,
    "6 TD residual": td_residuals(rewards, values_now, gamma=1.0, next_values=values_next),
}

# Per-episode gradient estimates: every episode gets its own copy of θ.
copies = theta2.detach().repeat(M, 1, 1).requires_grad_(True)  # (M, S, A)
episode = torch.arange(M)[:, None]
logp_taken = F.log_softmax(copies[episode, states[:, :H]], -1).gather(2, actions[..., None]).squeeze(-1)  # (M, H)
rows, variances = [], {}
for name, psi in psis.items():
    (grads,) = torch.autograd.grad(score_function_surrogate(logp_taken, psi).sum(), copies, retain_graph=True)
    grads = grads.reshape(M, -1)  # (M, 4)
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(M)
    z = float(((mean - grad_exact2.flatten()) / stderr).abs().max())
    variances[name] = float(grads.var(0).sum())
    rows.append([name, *mean.tolist(), z, variances[name]])
rows.insert(0, ["exact ∇J (autograd)", *grad_exact2.flatten().tolist(), "", ""])
table(["Ψ_t", "θ00", "θ01", "θ10", "θ11", "max |z|", "Var[ĝ]"], rows, digits=4)
print(f"\n    {M} sampled episodes of {H} steps (rewards with noise σ = {noise}); z = (mean − exact)/standard error.")
worst_z = max(row[5] for row in rows[1:])
lesson.verdict("Every Ψ estimates the same gradient: |z| stays within a few standard errors (sampling noise)",
               worst_z < 4, f"largest |z| = {worst_z:.2f} < 4")
var = list(variances.values())  # in the order 1 … 6
lesson.verdict("Subtracting the baseline V (1→3, 4→5) cuts the variance, and so does replacing sampled returns "
               "by known values (2→4, 3→5); A uses both and is lowest",
               var[2] < var[1] and var[4] < var[3] and var[3] < var[1] and var[4] < var[2] and var[4] == min(var),
               "Var[ĝ] of Ψ 1…6: " + ", ".join(f"{v:.2f}" for v in var))
print("    The TD residual (6) needs only V but carries the noise of one reward and one transition. A real")
print("    agent does not know Q, A or V: a critic estimates them (lesson 7), which brings bias back in")
print("    exchange for this variance.")

fig, ax = plt.subplots(figsize=(7, 3.8))
ax.barh(list(variances)[::-1], list(variances.values())[::-1], color="tab:blue")
ax.set_xscale("log")
ax.set_xlabel("variance of one episode's gradient estimate (sum over parameters, log scale)")
ax.set_title("PG-8: same expected gradient, different variances")
lesson.save(fig, "psi_variances.png")

# %%
lesson.done()
