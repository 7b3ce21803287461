"""Lesson 4 — TRPO: a trust region by conjugate gradient and line search.

What it teaches
    TRPO maximises the ratio surrogate E[ρA] under a hard limit δ on the average KL between
    the old and new policy. Near θ_old the KL is a quadratic form ½ΔθᵀFΔθ with F the Fisher
    matrix (the Hessian of the KL); the best step is along F⁻¹g, found by conjugate gradient
    from Fisher-vector products alone, scaled to the edge of the trust region and then checked
    by a backtracking line search. Each step moves the policy by a chosen KL, whatever the
    gradient's size: that is what PPO later gets from clipping, with first-order steps only.

Notes followed
    002_c297ee72da052b00.txt (PPO paper notes): "TRPO (Trust Region Policy Optimization)": max
        E[π_θ/π_θold · A] subject to E[KL[π_θold, π_θ]] ≤ δ ("这样的目标就基本上是所有 RL
        方法的大方向了").
    004_27c6b9375ccb306e.txt (PG to GRPO): "TRPO": 信赖域 (trust region); approximate the new policy by
        the current one while the distributions stay close (KL散度); 泰勒逼近 (Taylor approximation),
        黑塞矩阵 (the Hessian), 共轭梯度 (conjugate gradient) and 线性搜索 (line search) to find
        a step that really satisfies the constraint.

Formula IDs: TR-1.

Run:  python -m lessons run 4 [--step] [--long]

Deviations from the papers
    A linear softmax policy on a contextual bandit with known rewards, so the expected reward
    and the KL can be computed exactly. The KL is averaged over the batch's states (the
    paper's practical form), CG runs 10 iterations with damping 0.1 (F + 0.1·I) as in the
    reference code; the line search halves the step up to 10 times and also demands that the
    surrogate improve.
"""

FORMULAS = ("TR-1",)

# %% Setup: a linear softmax policy over 4 actions, 3 state features, a batch of 256 states
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from core.kl import categorical_kl
from core.trpo import backtracking_line_search, conjugate_gradient, fisher_vector_product, trpo_step
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
f64 = torch.float64
torch.manual_seed(lesson.seed)

g = lesson.generator(0)
N_STATES, N_FEATURES, N_ACTIONS = 256, 3, 4
states = torch.randn(N_STATES, N_FEATURES, generator=g, dtype=f64)
hidden_weights = torch.randn(N_ACTIONS, N_FEATURES, generator=g, dtype=f64)
reward_table = states @ hidden_weights.T  # r(s, a), (N, A): known here, so E[r] is exact


def make_policy():
    policy = torch.nn.Linear(N_FEATURES, N_ACTIONS).double()
    with torch.no_grad():
        policy.weight.copy_(0.3 * torch.randn(N_ACTIONS, N_FEATURES, generator=lesson.generator(1), dtype=f64))
        policy.bias.zero_()
    return policy


def expected_reward(policy):
    """J = mean over states of Σ_a π(a|s) r(s, a), exactly."""
    with torch.no_grad():
        return float((F.softmax(policy(states), -1) * reward_table).sum(-1).mean())


def collect(policy, g):
    """One batch from the current policy: sampled actions, their old log-probs, advantages."""
    with torch.no_grad():
        logits = policy(states)
        probs = F.softmax(logits, -1)
        actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
        old_logp = F.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
        # A = r(s, a) − V(s), with the exact V(s) = Σ_a π(a|s) r(s, a) as the baseline
        advantages = reward_table.gather(1, actions[:, None]).squeeze(1) - (probs * reward_table).sum(-1)
    return logits, actions, old_logp, advantages


def objective_and_constraint(policy, old_logits, actions, old_logp, advantages):
    """The two functions TRPO needs, both recomputed from the current parameters."""

    def surrogate():  # E[ρ A]
        logp = F.log_softmax(policy(states), -1).gather(1, actions[:, None]).squeeze(1)
        return (torch.exp(logp - old_logp) * advantages).mean()

    def mean_kl():  # E_s[KL[π_old(·|s) ‖ π_θ(·|s)]]
        return categorical_kl(old_logits, policy(states)).mean()

    return surrogate, mean_kl


policy = make_policy()
params = list(policy.parameters())
n_params = sum(p.numel() for p in params)
old_logits, actions, old_logp, advantages = collect(policy, lesson.generator(2))
surrogate, mean_kl = objective_and_constraint(policy, old_logits, actions, old_logp, advantages)

# %% Step 1 — the constrained problem
lesson.step("The trust-region problem, note 002", ids=["TR-1"])
(grad_kl_at_old,) = torch.autograd.grad(mean_kl(), params[0])
gradient = torch.cat([x.reshape(-1) for x in torch.autograd.grad(surrogate(), params)])  # g, (n,)
print(f"    policy: {N_STATES} states × {N_FEATURES} features → {N_ACTIONS} actions; θ has {n_params} numbers")
with torch.no_grad():
    print(f"    at θ_old: surrogate E[ρA] = {float(surrogate()):.4f} (ρ = 1: the mean of the sampled A), "
          f"KL = {float(mean_kl()):.1e}")
kl_at_old = float(mean_kl().detach())
lesson.verdict("At θ_old the KL is zero with zero gradient (at its minimum)",
               kl_at_old < 1e-12 and float(grad_kl_at_old.abs().max()) < 1e-12,
               f"KL = {kl_at_old:.1e}, max |∇KL| = {float(grad_kl_at_old.abs().max()):.1e}, both < 1e-12")
print("    So near θ_old the constraint is quadratic:  KL(θ_old + Δθ) ≈ ½ Δθᵀ F Δθ,  F = ∇²KL (the Fisher matrix)")
print(f"    ‖g‖ = ‖∇E[ρA]‖ = {float(gradient.norm()):.4f}")

# %% Step 2 — Fisher-vector products without building F
lesson.step(
    "Fisher-vector products (黑塞矩阵 without forming it)",
    "F v = ∇_θ (∇_θ KL · v)   at θ = θ_old      (two backward passes)",
    "F = E_s E_{a∼π_old}[∇log π(a|s) ∇log π(a|s)ᵀ]   (Fisher information: the same matrix)",
    ids=["TR-1"])

theta_old = parameters_to_vector(params).detach().clone()


def logprobs_at(flat):
    """log π(·|s) for every state with the parameters given as one flat vector: (N, A)."""
    weight, bias = flat[: N_ACTIONS * N_FEATURES].view(N_ACTIONS, N_FEATURES), flat[N_ACTIONS * N_FEATURES :]
    return F.log_softmax(states @ weight.T + bias, -1)


# Two independent references, for display: the explicit Hessian, and the mean outer product of scores.
hessian = torch.autograd.functional.hessian(
    lambda flat: categorical_kl(old_logits, logprobs_at(flat)).mean(), theta_old, vectorize=True)  # (n, n)
scores = torch.autograd.functional.jacobian(logprobs_at, theta_old, vectorize=True)  # (N, A, n): ∇log π(a|s)
old_probs = F.softmax(old_logits, -1)
fisher = torch.einsum("sa,sai,saj->ij", old_probs, scores, scores) / N_STATES
v = torch.randn(n_params, generator=lesson.generator(3), dtype=f64)
fvp = fisher_vector_product(mean_kl, params, v)
table(["F v computed as", "first 4 entries", "max |diff| to core"],
      [["core.trpo.fisher_vector_product", str([round(x, 4) for x in fvp[:4].tolist()]), 0.0],
       ["explicit Hessian of the KL @ v", str([round(x, 4) for x in (hessian @ v)[:4].tolist()]),
        float((hessian @ v - fvp).abs().max())],
       ["E[score scoreᵀ] @ v", str([round(x, 4) for x in (fisher @ v)[:4].tolist()]),
        float((fisher @ v - fvp).abs().max())]])
fvp_gap = max(float((hessian @ v - fvp).abs().max()), float((fisher @ v - fvp).abs().max()))
print()
lesson.verdict("Hessian-vector product of the KL, explicit Hessian and mean outer product of scores are the same "
               "F v", fvp_gap < 1e-10, f"largest difference {fvp_gap:.1e} < 1e-10")
print(f"    F is {n_params}×{n_params} here; for a network with 10⁹ parameters it could not be stored,")
print("    but F·v costs about two backward passes.")

# %% Step 3 — conjugate gradient solves F s = g with products only
lesson.step(
    "Conjugate gradient (共轭梯度)",
    "solve F s = g for the natural-gradient direction s = F⁻¹ g, using only v ↦ F v",
    ids=["TR-1"])

damping = 0.1


def damped_fvp(vec):
    return fisher_vector_product(mean_kl, params, vec, damping=damping)  # (F + 0.1 I) v


exact_direction = torch.linalg.solve(hessian + damping * torch.eye(n_params, dtype=f64), gradient)  # s*, dense
rows, residuals = [], []
cg_iterations = [1, 2, 3, 4, 5, 6, 8, 10, 16]
damped_fisher = hessian + damping * torch.eye(n_params, dtype=f64)  # only to measure the residual here
for iterations in cg_iterations:
    s = conjugate_gradient(damped_fvp, gradient, iterations=iterations)
    residual = float((damped_fisher @ s - gradient).norm())
    residuals.append(residual)
    rows.append([iterations, residual, float((s - exact_direction).norm() / exact_direction.norm())])
table(["CG iterations", "‖(F+λI)s − g‖", "‖s − s*‖/‖s*‖"], rows, digits=6)
print(f"\n    (λ = {damping} is the damping; s* from a dense solve, shown for comparison.)")
at_ten = rows[cg_iterations.index(10)][2]
lesson.verdict("TRPO stops at 10 iterations: the direction is good enough (within 1% of s*) long before the "
               f"{n_params} iterations that solve the {n_params}×{n_params} system exactly in theory",
               at_ten < 0.01, f"‖s − s*‖/‖s*‖ after 10 iterations = {at_ten:.1e} < 0.01")
print("    Each iteration is one F·v.")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.semilogy(cg_iterations, residuals, "o-")
ax.axvline(10, color="gray", ls="--", label="TRPO's 10 iterations")
ax.set_xlabel("CG iterations")
ax.set_ylabel("‖(F+λI)s − g‖")
ax.set_title("TR-1: conjugate gradient with Fisher-vector products")
ax.legend()
lesson.save(fig, "cg_residual.png")

# %% Step 4 — the step size, and the line search that checks it
lesson.step(
    "Step size and backtracking line search (线性搜索)",
    "Δθ = √(2δ / sᵀFs) · s      so that ½ ΔθᵀFΔθ = δ    (the quadratic model's KL is exactly δ)",
    "try Δθ, Δθ/2, Δθ/4, …: keep the first with KL ≤ δ and a higher surrogate",
    ids=["TR-1"])

max_kl = 0.01
direction = conjugate_gradient(damped_fvp, gradient, iterations=10)
s_F_s = direction @ damped_fvp(direction)
full_step = torch.sqrt(2 * max_kl / s_F_s) * direction
with torch.no_grad():
    base = float(surrogate())
rows = []
with torch.no_grad():
    for j in range(5):
        fraction = 0.5**j
        vector_to_parameters(theta_old + fraction * full_step, params)
        predicted = 0.5 * fraction**2 * float(full_step @ (hessian @ full_step))
        rows.append([fraction, predicted, float(mean_kl()), float(surrogate()) - base])
    vector_to_parameters(theta_old, params)
table(["fraction of Δθ", "½ΔθᵀFΔθ (F undamped)", "true KL", "surrogate gain"], rows, digits=5)
accepted, fraction = backtracking_line_search(params, full_step, surrogate, mean_kl, max_kl=max_kl)
print(f"\n    δ = {max_kl}: the line search accepts fraction {fraction} (accepted = {accepted}).")
lesson.verdict(f"The damping (F + {damping}·I in the scale) shortens the step: the quadratic form with the undamped F "
               "and the true KL of the full step are both under δ, and the full step is accepted",
               rows[0][1] <= max_kl and rows[0][2] <= max_kl and accepted and fraction == 1.0,
               f"½ΔθᵀFΔθ = {rows[0][1]:.4f}, true KL = {rows[0][2]:.4f}, both ≤ δ = {max_kl}; "
               f"accepted fraction {fraction}")
vector_to_parameters(theta_old, params)
# A step twice too long, as when the quadratic model underestimates the KL: the search halves it.
accepted, fraction = backtracking_line_search(params, 2 * full_step, surrogate, mean_kl, max_kl=max_kl)
with torch.no_grad():
    vector_to_parameters(theta_old + fraction * 2 * full_step, params)
    backed_off_kl = float(mean_kl())
lesson.verdict("Given a step twice as long (KL ≈ 4δ), the search backs off to a shorter step within δ",
               accepted and fraction < 1.0 and backed_off_kl <= max_kl,
               f"fraction {fraction} of it, KL {backed_off_kl:.4f} ≤ δ = {max_kl}")
vector_to_parameters(theta_old, params)

# %% Step 5 — TRPO iterations vs plain gradient ascent
lesson.step(
    "Every update moves the policy by at most δ",
    "TRPO:           θ ← θ + (line search) · √(2δ/sᵀFs) · F⁻¹g",
    "plain gradient: θ ← θ + α g            (the KL of a step depends on g and the curvature)",
    ids=["TR-1"])

iterations = 40 if lesson.long else 15
histories = {}
for method in ("TRPO, δ = 0.01", "gradient ascent, α = 2"):
    policy = make_policy()
    params = list(policy.parameters())
    g = lesson.generator(5)
    rewards, kls = [expected_reward(policy)], []
    for _ in range(iterations):
        old_logits, actions, old_logp, advantages = collect(policy, g)
        surrogate, mean_kl = objective_and_constraint(policy, old_logits, actions, old_logp, advantages)
        if method.startswith("TRPO"):
            info = trpo_step(params, surrogate, mean_kl, max_kl=0.01)
            kls.append(info["kl"])
        else:
            grads = torch.autograd.grad(surrogate(), params)
            with torch.no_grad():
                for p, grad in zip(params, grads):
                    p += 2.0 * grad
                kls.append(float(mean_kl()))
        rewards.append(expected_reward(policy))
    histories[method] = (rewards, kls)
best = float(reward_table.max(-1).values.mean())
table(["method", "J start", f"J after {iterations}", "min KL/step", "max KL/step"],
      [[name, r[0], r[-1], min(k), max(k)] for name, (r, k) in histories.items()])
trpo_kls = histories["TRPO, δ = 0.01"][1]
plain_rewards, plain_kls = histories["gradient ascent, α = 2"]
print(f"\n    (J of the best possible policy: {best:.4f}.)")
lesson.verdict("TRPO spends its budget on every update: the KL of each step lies near δ (above δ/4), never above "
               "δ, whatever the gradient", max(trpo_kls) <= 0.01 and min(trpo_kls) > 0.01 / 4,
               f"KL per step {min(trpo_kls):.4f}–{max(trpo_kls):.4f}, within (δ/4, δ]")
lesson.verdict("On this easy problem the bold fixed step gets further in the same number of updates, but the size "
               "of its updates swings by orders of magnitude (a fixed α is too timid in one place and too bold in "
               "another)",
               plain_rewards[-1] > histories["TRPO, δ = 0.01"][0][-1] and max(plain_kls) / min(plain_kls) > 100,
               f"J {plain_rewards[-1]:.4f} vs TRPO {histories['TRPO, δ = 0.01'][0][-1]:.4f}; its KL per step "
               f"spans a factor {max(plain_kls) / min(plain_kls):.0f} > 100")
print("    PPO keeps TRPO's idea (small, bounded moves) with first-order steps (lessons 5 and 6).")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for name, (r, k) in histories.items():
    axes[0].plot(r, label=name)
    axes[1].plot(range(1, len(k) + 1), k, "o-", label=name)
axes[0].axhline(best, color="gray", ls=":", label="best policy")
axes[0].set_xlabel("update")
axes[0].set_ylabel("expected reward J")
axes[1].axhline(0.01, color="gray", ls="--", label="δ")
axes[1].set_yscale("log")
axes[1].set_xlabel("update")
axes[1].set_ylabel("KL[π_old ‖ π_new] of the update")
for ax in axes:
    ax.legend(fontsize=8)
fig.suptitle("TR-1: TRPO controls the size of each update in KL")
lesson.save(fig, "trpo_vs_gradient.png")

# %%
lesson.done()
