"""Lesson 7 — Advantages: TD residuals, k-step estimates and GAE(λ).

What it teaches
    The advantage A = Q − V must be estimated from one rollout and a learned critic V. The TD
    residual δ_t is the one-step estimate; k-step estimates add more real rewards, trading the
    critic's bias for the rewards' variance; GAE(λ) averages all k with weights (1 − λ)λ^{k−1}
    and is computed by a one-line backward recursion. Episode ends need care: nothing flows
    across them, and a time-limit cut still bootstraps. The critic itself is regressed to
    Â + V, the λ-return.

Notes followed
    003_0b6419f90971e6ff.txt (PPO derived): "优势函数" (advantage function) A(s_t, a) = Q(s_t, a) −
        V(s_t); "如何估计优势函数": A^(1) = δ_t (TD残差), A^(2) = δ_t + γδ_{t+1}, the k-step estimate
        (k 阶近似估计) A^(k) = Σ_{l<k} γ^l δ_{t+l}; larger k: 偏差越小, 方差反而变大 (less bias,
        more variance); the λ-return weighting and the (1 − λ) factor (the note's 1/(1 − λ)
        remark); 广义优势估计 (GAE).
    004_27c6b9375ccb306e.txt (PG to GRPO): "GAE" (指数加权平均, exponentially weighted average of TD
        residuals); Q = r + γV (方式6); how the critic is trained.
    001_883a2028b23f6fee.txt (PPO for LLMs): A(x, y) = r′(x, y) − V_ψ(x), the RLHF form with a value
        model.

Formula IDs: AD-1, AD-2, AD-3, AD-4, AD-5, AD-6, AD-7.

Run:  python -m lessons run 7 [--step] [--long]

Deviations from the papers
    Hand-made episodes and a five-state chain with known values instead of an environment.
    Episode ends follow gymnasium: `terminations` (the state has no future) and `truncations`
    (a time limit cut it; GAE bootstraps from the final observation's value, which CleanRL's
    ppo.py does not). The critic is a table of five numbers trained with Adam.
"""

FORMULAS = ("AD-1", "AD-2", "AD-3", "AD-4", "AD-5", "AD-6", "AD-7")

# %% Setup
import torch

from core.advantages import gae
from core.losses import value_loss
from core.returns import (
    discounted_returns,
    gae_weighted_sum,
    k_step_advantages,
    lambda_returns,
    td_residuals,
)
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
torch.manual_seed(lesson.seed)
f64 = torch.float64

# One short episode that ends in a terminal state after step 3.
gamma = 0.9
rewards = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=f64)  # R_0 … R_3
values = torch.tensor([0.5, 0.4, 0.9, 0.3], dtype=f64)  # V(s_0) … V(s_3), from a critic
next_values = torch.tensor([0.4, 0.9, 0.3, 0.0], dtype=f64)  # V(s_1) … V(s_4); s_4 is terminal
terminal = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=f64)

# %% Step 1 — AD-2: the TD residual
lesson.step("The TD residual (TD残差), note 003", ids=["AD-2"])
delta = td_residuals(rewards, values, gamma=gamma, next_values=next_values, terminations=terminal)
rows = []
for t in range(4):
    bootstrap = 0.0 if terminal[t] else gamma * float(next_values[t])
    by_hand = float(rewards[t]) + bootstrap - float(values[t])
    rows.append([t, rewards[t], values[t], next_values[t], float(rewards[t]) + bootstrap, by_hand, delta[t]])
table(["t", "R_t", "V(s_t)", "V(s_t+1)", "Q^(1) = R + γV'", "δ_t by hand", "td_residuals"], rows)
print(f"\n    γ = {gamma}.")
td_gap = max(abs(row[5] - float(row[6])) for row in rows)
lesson.verdict("td_residuals equals the hand computation; at the last step the next state is terminal, so its "
               "value is not added: δ_3 = R_3 − V(s_3)",
               td_gap < 1e-12 and abs(float(delta[3]) - float(rewards[3] - values[3])) < 1e-12,
               f"largest difference {td_gap:.0e}; δ_3 = {float(delta[3]):.4f} = R_3 − V(s_3)")
print("    δ_t is the one-step advantage estimate A^(1)_t: Q^(1)_t, a one-step guess of Q(s_t, a_t),")
print("    minus V(s_t).")

# %% Step 2 — AD-3: k-step estimates, two ways
lesson.step("k-step estimates (k 阶近似估计), note 003", ids=["AD-3"])
rows, k_gap = [], 0.0
for k in (1, 2, 3, 4):
    from_rewards = k_step_advantages(rewards, values, next_values, gamma=gamma, k=k, terminal_at_end=True)
    from_deltas = [sum(gamma**l * float(delta[t + l]) for l in range(min(k, 4 - t))) for t in range(4)]
    rows.append([k, *from_rewards.tolist(), str([round(x, 4) for x in from_deltas])])
    k_gap = max(k_gap, max(abs(a - b) for a, b in zip(from_rewards.tolist(), from_deltas)))
table(["k", "A^(k)_0", "A^(k)_1", "A^(k)_2", "A^(k)_3", "Σ_{l<k} γ^l δ_{t+l} (loop)"], rows)
print("\n    k_step_advantages sums k real rewards and bootstraps with γ^k V(s_{t+k}); the loop sums TD")
print("    residuals.")
lesson.verdict("The two agree", k_gap < 1e-12, f"largest difference {k_gap:.0e} < 1e-12")
print("    The V terms in between cancel, as note 003 shows for k = 2:")
print("    A^(2) = (R_t + γV_{t+1} − V_t) + (γR_{t+1} + γ²V_{t+2} − γV_{t+1}) = δ_t + γδ_{t+1}.")
print("    When fewer than k steps remain, the estimate stops at the episode end (rows for t = 2, 3).")

# %% Step 3 — AD-6: larger k, less bias, more variance
lesson.step("Bias and variance of the k-step estimate (偏差越小, 方差反而变大)", ids=["AD-6"])
# A long chain where every reward is N(0, 1): the true V is 0 everywhere. The critic is wrong by +1.
g = lesson.generator(3)
n_episodes, horizon = (50_000, 20) if lesson.long else (20_000, 20)
noisy_rewards = torch.randn(n_episodes, horizon, generator=g, dtype=f64)
wrong_values = torch.ones(n_episodes, horizon, dtype=f64)  # V = 1, truth 0
rows, ks, biases, variances = [], [1, 2, 3, 4, 6, 8, 12], [], []
for k in ks:
    q_k = (k_step_advantages(noisy_rewards, wrong_values, wrong_values, gamma=gamma, k=k) + wrong_values)[:, 0]
    biases.append(float(q_k.mean()))  # the true Q is 0
    variances.append(float(q_k.var()))
    rows.append([k, biases[-1], gamma**k, variances[-1], sum(gamma ** (2 * i) for i in range(k))])
table(["k", "bias of Q^(k)", "γ^k (critic error 1)", "variance", "Σ_{i<k} γ^{2i}"], rows)
print(f"\n    {n_episodes} episodes.")
bias_gap = max(abs(b - gamma**k) for b, k in zip(biases, ks))
lesson.verdict("The critic's error enters only through γ^k V(s_{t+k}), so the bias shrinks as γ^k; every extra real "
               "reward adds its own noise, so the variance grows",
               bias_gap < 0.05 and all(a < b for a, b in zip(variances, variances[1:])),
               f"largest |bias − γ^k| = {bias_gap:.3f} < 0.05; variance {variances[0]:.2f} → {variances[-1]:.2f}, "
               "rising with every k")

# %% Step 4 — AD-4: GAE, three ways to compute the same number
lesson.step(
    "Generalized advantage estimation (广义优势估计), notes 003 and 004",
    "Â_t = (1−λ) Σ_{k≥1} λ^{k−1} A^(k)_t = Σ_{l≥0} (γλ)^l δ_{t+l}",
    "backward recursion:  Â_t = δ_t + γλ Â_{t+1}",
    ids=["AD-4"])
lam = 0.8
weights = [(1 - lam) * lam ** (k - 1) for k in range(1, 200)]
print(f"    weights (1−λ)λ^(k−1) for λ = {lam}: {[round(w, 3) for w in weights[:5]]} …, sum = {sum(weights):.6f}")
print("    Without the (1−λ) the weights would sum to 1/(1−λ) (note 003's remark); with it Â is an average.\n")
weight_sum = sum(weights)
g = lesson.generator(4)
T = 8
ep_rewards = torch.randn(T, generator=g, dtype=f64)
ep_values = torch.randn(T, generator=g, dtype=f64)
ep_next = torch.cat([ep_values[1:], torch.zeros(1, dtype=f64)])  # terminal after the last step
ep_term = torch.zeros(T, dtype=f64)
ep_term[-1] = 1.0
recursion = gae(ep_rewards, ep_values, gamma=gamma, gae_lambda=lam, next_values=ep_next, terminations=ep_term)
weighted = gae_weighted_sum(ep_rewards, ep_values, ep_next, gamma=gamma, gae_lambda=lam, terminal_at_end=True)
ep_delta = td_residuals(ep_rewards, ep_values, gamma=gamma, next_values=ep_next, terminations=ep_term)
loop = [sum((gamma * lam) ** l * float(ep_delta[t + l]) for l in range(T - t)) for t in range(T)]
table(["t", "gae (recursion)", "gae_weighted_sum", "Σ (γλ)^l δ (loop)"],
      [[t, recursion[t], weighted[t], loop[t]] for t in range(T)], digits=6)
lambda_zero = gae(ep_rewards, ep_values, gamma=gamma, gae_lambda=0.0, next_values=ep_next, terminations=ep_term)
lambda_one = gae(ep_rewards, ep_values, gamma=gamma, gae_lambda=1.0, next_values=ep_next, terminations=ep_term)
monte_carlo = discounted_returns(ep_rewards, gamma=gamma) - ep_values
print(f"\n    λ = 0: max |Â − δ| = {float((lambda_zero - ep_delta).abs().max()):.1e}        (one step, all critic)")
print(f"    λ = 1: max |Â − (G_t − V_t)| = {float((lambda_one - monte_carlo).abs().max()):.1e}  "
      "(Monte Carlo return minus V, all rewards)")
three_ways = max(max(abs(float(recursion[t]) - float(weighted[t])), abs(float(recursion[t]) - loop[t]))
                 for t in range(T))
ends = max(float((lambda_zero - ep_delta).abs().max()), float((lambda_one - monte_carlo).abs().max()))
lesson.verdict("GAE three ways gives one number; λ = 0 is the TD residual, λ = 1 the Monte Carlo return minus V; the "
               "weights (1−λ)λ^(k−1) sum to 1",
               three_ways < 1e-10 and ends < 1e-10 and abs(weight_sum - 1) < 1e-6,
               f"largest gap between the three {three_ways:.0e}, at the ends {ends:.0e} (< 1e-10); Σ weights = "
               f"{weight_sum:.6f}")

# %% Step 5 — λ as the bias–variance knob
lesson.step("λ between the TD residual and the Monte Carlo return",
            "bias and variance of Â_0 + V(s_0) as an estimate of Q, same chain as step 3", ids=["AD-4", "AD-6"])
rows, lambdas, lam_bias, lam_var = [], [0.0, 0.5, 0.8, 0.9, 0.95, 1.0], [], []
for lam_value in lambdas:
    estimate = (gae(noisy_rewards, wrong_values, gamma=gamma, gae_lambda=lam_value, next_values=wrong_values)
                + wrong_values)[:, 0]
    lam_bias.append(float(estimate.mean()))
    lam_var.append(float(estimate.var()))
    rows.append([lam_value, lam_bias[-1], lam_var[-1]])
table(["λ", "bias", "variance"], rows)
print()
lesson.verdict("λ is the bias–variance knob: raising λ lowers the bias and raises the variance",
               all(a > b for a, b in zip(lam_bias, lam_bias[1:])) and all(a < b for a, b in zip(lam_var, lam_var[1:])),
               f"bias {lam_bias[0]:.3f} → {lam_bias[-1]:.3f} falling, variance {lam_var[0]:.2f} → {lam_var[-1]:.2f} "
               "rising, at every λ of the table")
lesson.verdict(f"Here the window of {horizon} steps ends without termination, so even λ = 1 bootstraps once, at the "
               f"window's end: its bias is γ^{horizon}", abs(lam_bias[-1] - gamma**horizon) < 0.02,
               f"bias at λ = 1 {lam_bias[-1]:.3f} vs γ^{horizon} = {gamma**horizon:.3f} (within 0.02)")
print("    PPO's default λ = 0.95 sits near the Monte Carlo end: mostly real rewards, a little help from the")
print("    critic.")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(ks, biases, "o-", label="bias")
axes[0].plot(ks, variances, "s-", label="variance")
axes[0].set_xlabel("k")
axes[0].set_title("k-step estimate (AD-6)")
axes[1].plot(lambdas, lam_bias, "o-", label="bias")
axes[1].plot(lambdas, lam_var, "s-", label="variance")
axes[1].set_xlabel("λ")
axes[1].set_title("GAE(λ) (AD-4)")
for ax in axes:
    ax.legend()
fig.suptitle("Critic wrong by +1, rewards N(0, 1), γ = 0.9")
lesson.save(fig, "bias_variance.png")

# %% Step 6 — AD-5: episode boundaries in a rollout
lesson.step("Episode ends: termination vs truncation", ids=["AD-5"])
# One environment, six steps: episode 1 reaches a terminal state at t = 2; episode 2 starts at
# t = 3 and is cut by a time limit at t = 5, in a state still worth V(final observation) = 5.
row_rewards = torch.ones(6, dtype=f64)
row_values = torch.tensor([0.5, 0.6, 0.7, 2.0, 2.1, 2.2], dtype=f64)
row_next = torch.tensor([0.6, 0.7, 9.0, 2.1, 2.2, 5.0], dtype=f64)  # 9.0: never used (terminal)
row_term = torch.tensor([0, 0, 1, 0, 0, 0], dtype=f64)
row_trunc = torch.tensor([0, 0, 0, 0, 0, 1], dtype=f64)
kwargs = dict(gamma=gamma, gae_lambda=0.95, next_values=row_next)
correct = gae(row_rewards, row_values, terminations=row_term, truncations=row_trunc, **kwargs)
no_flags = gae(row_rewards, row_values, **kwargs)
trunc_as_term = gae(row_rewards, row_values, terminations=row_term + row_trunc, **kwargs)


def by_hand(t):
    """Σ (γλ)^l δ_{t+l} inside t's own episode; the bootstrap is dropped only at the termination."""
    end = 2 if t <= 2 else 5
    total = 0.0
    for j in range(t, end + 1):
        bootstrap = 0.0 if j == 2 else gamma * float(row_next[j])
        total += (gamma * 0.95) ** (j - t) * (float(row_rewards[j]) + bootstrap - float(row_values[j]))
    return total


table(["t", "episode end", "by hand", "gae with both flags", "no flags (leaks)", "truncation as termination"],
      [[t, ["", "", "terminated", "", "", "truncated"][t], by_hand(t), correct[t], no_flags[t], trunc_as_term[t]]
       for t in range(6)])
print()
flags_gap = max(abs(by_hand(t) - float(correct[t])) for t in range(6))
lesson.verdict("gae with both flags equals the hand computation, episode by episode", flags_gap < 1e-12,
               f"largest difference {flags_gap:.0e}")
leak = max(abs(float(no_flags[t] - correct[t])) for t in range(3))
lesson.verdict("Without flags, episode 2 leaks into episode 1 (t ≤ 2) and the terminal state gets V = 9", leak > 0.1,
               f"largest change of Â at t ≤ 2: {leak:.3f} > 0.1")
lost = float(correct[5] - trunc_as_term[5])
lesson.verdict("Treating the time limit as a termination throws away γ·V(final obs) = 4.5 at t = 5: states near the "
               "limit look worse than they are", abs(lost - gamma * 5.0) < 1e-12,
               f"Â_5 drops by {lost:.4f} = γ·5")

# %% Step 7 — AD-7 and AD-1: the critic's target, and the RLHF form
lesson.step(
    "The critic's target: the λ-return, note 004",
    "G^λ_t = R_t + γ[(1−λ)V(s_{t+1}) + λ G^λ_{t+1}] = Â_t + V(s_t);   critic loss (V_ψ(s_t) − G^λ_t)²",
    ids=["AD-7"])
targets = lambda_returns(row_rewards, row_values, terminations=row_term, truncations=row_trunc, **kwargs)
print(f"    λ-return recursion: {[round(x, 4) for x in targets.tolist()]}")
print(f"    Â + V:              {[round(x, 4) for x in (correct + row_values).tolist()]}")
target_gap = float((targets - (correct + row_values)).abs().max())
lesson.verdict("The λ-return recursion equals Â + V", target_gap < 1e-12, f"largest difference {target_gap:.0e}")
print()

# Regress a tabular critic to λ-returns on a five-state chain with known values.
N_STATES, P_RIGHT, GAMMA_CHAIN, LAM = 5, 0.6, 0.95, 0.9
# From state s: right with 0.6, left with 0.4 (state 0 stays); right from state 4 ends the episode
# with reward +10; every other step costs −1.
transition = torch.zeros(N_STATES, N_STATES, dtype=f64)
for s in range(N_STATES):
    transition[s, max(s - 1, 0)] += 1 - P_RIGHT
    if s + 1 < N_STATES:
        transition[s, s + 1] += P_RIGHT
expected_reward = torch.full((N_STATES,), -1.0, dtype=f64)
expected_reward[-1] = (1 - P_RIGHT) * -1.0 + P_RIGHT * 10.0
true_values = torch.linalg.solve(torch.eye(N_STATES, dtype=f64) - GAMMA_CHAIN * transition, expected_reward)

critic = torch.zeros(N_STATES, dtype=f64, requires_grad=True)
iterations = 80 if lesson.long else 30
# Plain SGD on the squared error moves each V(s) toward the mean of its targets; the decaying
# learning rate averages the noise of successive batches of sampled targets.
optimizer = torch.optim.SGD([critic], lr=2.0)  # 2 × ½(V − y)²: each step moves V by the mean error
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (1.0 + i / 5))
g = lesson.generator(7)
n_envs, window = 256, 40
state = torch.zeros(n_envs, dtype=torch.long)
history = []
for _ in range(iterations):
    states = torch.zeros(n_envs, window, dtype=torch.long)
    step_rewards = torch.zeros(n_envs, window, dtype=f64)
    ended = torch.zeros(n_envs, window, dtype=f64)
    after = torch.zeros(n_envs, window, dtype=torch.long)
    for t in range(window):  # a vectorised environment that resets itself at the end of an episode
        states[:, t] = state
        right = torch.rand(n_envs, generator=g) < P_RIGHT
        finished = right & (state == N_STATES - 1)
        step_rewards[:, t] = torch.where(finished, 10.0, -1.0)
        ended[:, t] = finished.to(f64)
        state = torch.where(right, state + 1, (state - 1).clamp(min=0))
        after[:, t] = state.clamp(max=N_STATES - 1)
        state = torch.where(finished, torch.zeros_like(state), state)
    with torch.no_grad():
        v_now, v_next = critic[states], critic[after]
        # ended = terminated: no bootstrap; the window's end is not an episode end, so it bootstraps
        targets = lambda_returns(step_rewards, v_now, gamma=GAMMA_CHAIN, gae_lambda=LAM, next_values=v_next,
                                 terminations=ended)
    for _ in range(5):
        optimizer.zero_grad()
        value_loss(critic[states], targets).mean().backward()
        optimizer.step()
    schedule.step()
    history.append(float((critic.detach() - true_values).abs().max()))
table(["state", "true V (linear solve)", "critic after training"],
      [[s, true_values[s], critic[s].detach()] for s in range(N_STATES)])
print(f"\n    max |V_ψ − V| after iteration 1, 10, {iterations}: "
      f"{history[0]:.2f} → {history[9]:.2f} → {history[-1]:.2f}.")
scale = float(true_values.abs().max())
lesson.verdict("Regressing to the λ-returns of its own rollouts, the critic approaches the true values",
               history[-1] < history[0] / 5 and history[-1] < 0.1 * scale,
               f"max |V_ψ − V| {history[0]:.2f} → {history[-1]:.2f}: below a fifth of the first and below 10% of "
               f"max |V| = {scale:.2f}")
print("    What is left is the noise of the sampled targets (and the bias of bootstrapping from its own estimates).")

# AD-1 in its RLHF form: one reply of 4 tokens, the shaped reward r' on the last real token,
# γ = λ = 1: every token's advantage is r'(x, y) − V_t, and at the first token r'(x, y) − V_ψ(x).
lesson.step("The RLHF form of the advantage, note 001", ids=["AD-1"])
token_rewards = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0]], dtype=f64)  # r' = 2 on the last real token
token_values = torch.tensor([[1.2, 1.5, 1.4, 1.8, 0.0]], dtype=f64)  # V_ψ per position; position 4 is padding
token_mask = torch.tensor([[1, 1, 1, 1, 0]])
token_adv = gae(token_rewards, token_values, gamma=1.0, gae_lambda=1.0, mask=token_mask)
print(f"    Â per token: {[round(x, 4) for x in token_adv[0].tolist()]}  (padding gets 0)")
lesson.verdict("r'(x, y) − V_ψ(x) = 2.0 − 1.2 is Â at the first token, and padding gets 0",
               abs(float(token_adv[0, 0]) - 0.8) < 1e-12 and float(token_adv[0, 4]) == 0.0,
               f"Â_0 = {float(token_adv[0, 0]):.4f}, Â at the padding = {float(token_adv[0, 4]):g}")
print("    A > 0: the reply was better than the value model expected for this prompt, so PPO raises its")
print("    probability; A < 0 lowers it (note 001).")

# %%
lesson.done()
