"""Lesson 9 — Actor–critic and PPO on CartPole and Flappy Bird.

What it teaches
    An actor–critic pairs the policy (the actor) with a learned value function (the critic).
    The critic is regressed to the one-step target r + γV(s′); the actor climbs
    E[∇log π(a|s) Â] with Â = r + γV(s′) − V(s) taken from the critic. Replacing the sampled
    return by the critic's estimate keeps the gradient (up to the critic's small bias) and
    cuts its variance several times over. PPO, Algorithm 1 of the paper, is this actor–critic
    with N actors × T steps of experience, GAE advantages and K epochs of minibatch updates on
    the clipped loss. One training loop, `envs.train.train`, solves CartPole in seconds and,
    unchanged, starts to learn Flappy Bird. Behind `--table1`, a miniature of the paper's
    Table 1 trains every objective of the paper (no clipping, clipping, adaptive and fixed KL
    penalties) on the same budget, so that why clipping became the default is measured here.

Notes followed
    004_27c6b9375ccb306e.txt (PG to GRPO): "Actor-Critic": 方法4 is actor-critic的雏形
        ("再用一个critic模型来估计价值"), 方式6 uses Q = r + γV; "Actor很好优化,但是critic应该如何优化?"
        (the actor is easy, how is the critic trained?); "Value Model是为了减少方差而设计出的深度模型"
        next to "VM实际上是为了减少RM计算过程中的高方差" (erratum E6); PPO惩罚 and PPO裁剪 (the penalty
        and the clipped form, the rows of Table 1).
    001_883a2028b23f6fee.txt (PPO for LLMs): the loop (整个循环): sample with the current π_θ, compute the
        reward, estimate A with V_ψ (使用V_ψ), maximise the clipped objective, "对收集的数据重复
        几个 epoch,然后收集新的样本"; "PPO 并非语言模型独有" (PPO also trains game players).
    003_0b6419f90971e6ff.txt (PPO derived): the note's own practice run is Flappy Bird
        ("以一个简单的小游戏： flappy bird，为具体的例子，对PPO算法进行了一个简单的实践"); the advantage
        (优势函数) estimated by GAE (广义优势估计).

Formula IDs: AC-1, AC-2. Check the note: E6 (what the value model's variance reduction is for).

Run:  python -m lessons run 9 [--step] [--long] [--table1]
    --table1            the miniature Table 1 on CartPole (33 runs, about 5 minutes on 2 busy cores)
    --table1 --long     the same on CartPole and Flappy Bird (66 runs, about 10 minutes)

Deviations from the papers
    Steps 1–3 use a five-cell corridor with tabular actor and critic, trained with plain SGD,
    so that V^π, J and the exact gradient come from a linear solve. The variance comparison
    weights step t by γ^t, which makes the episode's sum an unbiased estimate of ∇J; PPO's loss,
    like almost every implementation, drops that weight.
    PPO runs carry the 13 core details of "The 37 Implementation Details of PPO" (Huang et al.
    2022): advantages normalised per minibatch, value clipping, global gradient-norm clip 0.5,
    Adam ε = 1e-5, learning rate annealed to 0, orthogonal initialisation; discrete actions
    from a categorical policy instead of the paper's Gaussian. CartPole uses a quick
    configuration: N = 8 envs × T = 32 steps, minibatch 64, K = 10 epochs, learning rate
    2.5e-3, γ = 0.98, λ = 0.8, no entropy bonus, 20 000 steps. Flappy Bird uses the project's
    preset with learning rate 1e-3, minibatch 1024 and no annealing, so that 200 000 steps
    (1 200 000 with --long; the preset takes 20 million) are enough to see the score start to rise.
    Table 1 in miniature: CartPole (and Flappy Bird under --long) instead of seven MuJoCo tasks;
    20 000 steps per run (Flappy Bird 400 000) instead of one million; three seeds. The
    CartPole learning rate is doubled to 5e-3 (with K = 10 epochs on minibatches of 64), so
    that an unconstrained objective can overshoot as it does on MuJoCo. The penalty rows use
    the k3 sample estimate of KL[π_old‖π_θ] on the taken actions instead of the exact KL, and
    adaptive β starts at 1. The score of a run is the mean of the logged per-update mean
    episodic return over the last quarter of training (the paper: the last 100 episodes), and
    normalisation (random policy 0, best setting 1) is per game, then averaged over games.
"""

FORMULAS = ("AC-1", "AC-2")

# %% Setup
import math
import statistics
import sys
import textwrap
import time

import torch
import torch.nn.functional as F

# The lesson's own option: `--table1` runs the miniature Table 1 (the rest go to Lesson).
TABLE1 = "--table1" in sys.argv[1:]
if TABLE1:
    sys.argv.remove("--table1")

from core.losses import value_loss
from core.metrics import METRICS, read_metrics
from core.returns import discounted_returns, td_residuals
from core.surrogates import score_function_surrogate
from envs.config import TrainConfig, preset_for
from envs.evaluate import evaluate_policy
from envs.train import train
from envs.vector import make_vector_env, resolve_env_id
from lessons._common import Lesson, plt, table
from lessons.table1 import CARTPOLE, FLAPPY_CHANGES, QUIET, SETTINGS, Table1Config, games_of, run_table1

lesson = Lesson(__doc__)
f64 = torch.float64
CPU = torch.device("cpu")

# The corridor of steps 1–3: five cells, an exit at each end.
#     exit +0.3 ◀ [0] [1] [2] [3] [4] ▶ exit +1
#                      ↑ start
# Action 0 steps left, action 1 steps right; with probability SLIP the step goes the other way.
# Leaving the corridor ends the episode with the exit's reward; every other step pays 0.
N_CELLS, START, SLIP, GAMMA = 5, 1, 0.1, 0.9
LEFT_EXIT, RIGHT_EXIT = 0.3, 1.0


def corridor_model():
    """P[s, a, s′] over the cells (the exits are absorbing and left out) and the mean reward R[s, a]."""
    P = torch.zeros(N_CELLS, 2, N_CELLS, dtype=f64)
    R = torch.zeros(N_CELLS, 2, dtype=f64)
    for s in range(N_CELLS):
        for a, direction in ((0, -1), (1, +1)):
            for move, p in ((direction, 1 - SLIP), (-direction, SLIP)):
                t = s + move
                if t < 0:
                    R[s, a] += p * LEFT_EXIT
                elif t >= N_CELLS:
                    R[s, a] += p * RIGHT_EXIT
                else:
                    P[s, a, t] += p
    return P, R


P, R = corridor_model()


def exact_values(theta):
    """V^π = (I − γ P_π)⁻¹ r_π for the softmax policy with logits theta (N_CELLS, 2): a linear solve."""
    pi = F.softmax(theta, -1)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    return torch.linalg.solve(torch.eye(N_CELLS, dtype=f64) - GAMMA * P_pi, (pi * R).sum(-1))


def optimal_values():
    """V* by value iteration (the reference for how good the actor can get)."""
    V = torch.zeros(N_CELLS, dtype=f64)
    for _ in range(500):
        V = (R + GAMMA * P @ V).max(-1).values
    return V


def corridor_step(state, action, g):
    """One step of many corridors at once: next cell (clamped where an exit was taken), reward, terminated."""
    slipped = torch.rand(state.shape, generator=g) < SLIP
    landing = state + torch.where((action == 1) ^ slipped, 1, -1)
    left, right = landing < 0, landing >= N_CELLS
    reward = torch.where(left, LEFT_EXIT, torch.where(right, RIGHT_EXIT, 0.0)).to(f64)
    return landing.clamp(0, N_CELLS - 1), reward, left | right


def collect(theta, state, steps, g):
    """`steps` transitions of every corridor in `state` under π_θ; a finished episode restarts at START.

    Returns the batch (s, a, r, s′, terminated), each (n, steps), and the cells to continue from.
    """
    n = state.shape[0]
    cells = torch.zeros(n, steps, dtype=torch.long)
    actions, after = torch.zeros_like(cells), torch.zeros_like(cells)
    rewards, ended = torch.zeros(n, steps, dtype=f64), torch.zeros(n, steps, dtype=f64)
    probs = F.softmax(theta.detach(), -1)
    for t in range(steps):
        action = torch.multinomial(probs[state], 1, generator=g).squeeze(1)
        landing, reward, terminated = corridor_step(state, action, g)
        cells[:, t], actions[:, t], after[:, t] = state, action, landing
        rewards[:, t], ended[:, t] = reward, terminated.to(f64)
        state = torch.where(terminated, torch.full_like(state, START), landing)
    return (cells, actions, rewards, after, ended), state


def critic_step(critic, optimizer, batch, repeats=5):
    """Regress V_ψ(s) to y = r + γV_ψ(s′) (y = r after a terminal step), y held fixed; `repeats` SGD steps."""
    cells, _, rewards, after, ended = batch
    for _ in range(repeats):
        with torch.no_grad():  # y = δ + V(s) = r + γ V(s′)
            target = td_residuals(rewards, critic[cells], gamma=GAMMA, next_values=critic[after],
                                  terminations=ended) + critic[cells]
        optimizer.zero_grad()
        value_loss(critic[cells], target).mean().backward()
        optimizer.step()


N_ENVS, WINDOW = 64, 8  # 64 corridors, 8 steps each per iteration: 512 transitions

# %% Step 1 — AC-1, the critic: regress V to r + γV(s′)
lesson.step(
    "The critic (critic模型): regress V_ψ(s) to the one-step target, note 004",
    "critic loss (V_ψ(s) − y)²,   y = r + γV_ψ(s′) held fixed   (y = r when s′ is terminal)",
    "policy fixed here: uniform, π(left) = π(right) = ½",
    ids=["AC-1"])
print("    The corridor:   exit +0.3 ◀ [0] [1] [2] [3] [4] ▶ exit +1      start in cell 1")
print(f"    A step goes the chosen way, or the other way with probability {SLIP}; γ = {GAMMA}.\n")
uniform = torch.zeros(N_CELLS, 2, dtype=f64)
V_uniform = exact_values(uniform)
g = lesson.generator(1)
critic = torch.zeros(N_CELLS, dtype=f64, requires_grad=True)
critic_opt = torch.optim.SGD([critic], lr=2.0)  # 2 × ½(V − y)²: each step moves V by the mean error
# A decaying step size averages the noise of successive batches of sampled targets.
schedule = torch.optim.lr_scheduler.LambdaLR(critic_opt, lambda i: 1.0 / (1.0 + i / 10))
state = torch.full((N_ENVS,), START)
rows, fit_iterations = [], 200 if lesson.long else 100
for iteration in range(1, fit_iterations + 1):
    batch, state = collect(uniform, state, WINDOW, g)
    critic_step(critic, critic_opt, batch)
    schedule.step()
    if iteration in (1, 5, 20, fit_iterations):
        rows.append([iteration, *critic.detach().tolist(), float((critic.detach() - V_uniform).abs().max())])
rows.append(["V^π (linear solve)", *V_uniform.tolist(), ""])
table(["iteration", "V(0)", "V(1)", "V(2)", "V(3)", "V(4)", "max |V_ψ − V^π|"], rows, digits=3)
print(f"\n    Each iteration: {N_ENVS} corridors × {WINDOW} steps, then 5 SGD steps on the squared error. The target")
print("    uses the critic's own guess of V(s′) (bootstrapping): the exits' rewards reach the inner cells")
print("    through their neighbours' values, round after round.")
fit_error = float((critic.detach() - V_uniform).abs().max())
lesson.verdict("The critic settles at V^π up to the noise of the sampled targets", fit_error < 0.05,
               f"max |V_ψ − V^π| after {fit_iterations} iterations = {fit_error:.3f} < 0.05")
print("    This answers note 004's question 'critic应该如何优化'.")
V_psi = critic.detach().clone()

# %% Step 2 — E6: what the value model's variance reduction is for
lesson.step(
    "Why a critic: the variance of the policy gradient (减少方差), note 004",
    "ĝ = Σ_t γ^t Ψ_t ∇log π(a_t|s_t) over one episode, with",
    "  Ψ_t = G_t                               sampled return, no value model",
    "  Ψ_t = G_t − V_ψ(s_t)                    the critic as a baseline",
    "  Ψ_t = r_t + γV_ψ(s_{t+1}) − V_ψ(s_t)    the actor–critic's Â (方式6, Q = r + γV)",
    ids=["AC-1"])
M, L = (50_000, 100) if lesson.long else (20_000, 100)  # episodes, step cap (γ^100 ≈ 3e-5)
g = lesson.generator(2)
cells = torch.zeros(M, L, dtype=torch.long)
actions, after = torch.zeros_like(cells), torch.zeros_like(cells)
rewards, ended, alive = (torch.zeros(M, L, dtype=f64) for _ in range(3))
state, live = torch.full((M,), START), torch.ones(M, dtype=torch.bool)
probs = F.softmax(uniform, -1)
for t in range(L):  # M whole episodes side by side; a finished one stays masked out
    action = torch.multinomial(probs[state], 1, generator=g).squeeze(1)
    landing, reward, terminated = corridor_step(state, action, g)
    cells[:, t], actions[:, t], after[:, t] = state, action, landing
    rewards[:, t], ended[:, t], alive[:, t] = reward * live, (terminated & live).to(f64), live.to(f64)
    live, state = live & ~terminated, landing

theta = uniform.clone().requires_grad_(True)
(exact_grad,) = torch.autograd.grad(exact_values(theta)[START], theta)  # ∇J, J = V^π(start)
returns = discounted_returns(rewards, gamma=GAMMA, dones=ended)  # G_t, (M, L)
psis = {
    "G_t (no critic)": returns,
    "G_t − V_ψ(s_t)": returns - V_psi[cells],
    "r + γV_ψ(s′) − V_ψ(s)": td_residuals(rewards, V_psi[cells], gamma=GAMMA, next_values=V_psi[after],
                                          terminations=ended),
}
copies = uniform.repeat(M, 1, 1).requires_grad_(True)  # one copy of θ per episode: (M, cells, 2)
logp = F.log_softmax(copies[torch.arange(M)[:, None], cells], -1).gather(2, actions[..., None]).squeeze(-1)
discount = GAMMA ** torch.arange(L, dtype=f64)
rows, variances = [], {}
for name, psi in psis.items():
    (grads,) = torch.autograd.grad(score_function_surrogate(logp, discount * alive * psi).sum(), copies,
                                   retain_graph=True)
    grads = grads.reshape(M, -1)  # (M, 10): one gradient estimate per episode
    mean = grads.mean(0)
    variances[name] = float(grads.var(0).sum())
    rows.append([name, float((mean - exact_grad.flatten()).abs().max()),
                 float((grads.std(0) / math.sqrt(M)).max()), variances[name]])
table(["Ψ_t", "max |mean ĝ − ∇J|", "its standard error", "Var[ĝ] (sum over θ)"], rows)
first = variances["G_t (no critic)"]
print(f"\n    {M} episodes of the uniform policy; ∇J from autograd through the linear solve, max |∇J| = "
      f"{float(exact_grad.abs().max()):.3f}.")
by_baseline = first / variances["G_t − V_ψ(s_t)"]
by_one_step = first / variances["r + γV_ψ(s′) − V_ψ(s)"]
lesson.verdict("The critic as a baseline divides the variance, and the one-step Â divides it further",
               1.5 < by_baseline < by_one_step, f"by {by_baseline:.1f} (> 1.5) and by {by_one_step:.1f}")
bias, stderr = rows[2][1], rows[2][2]
lesson.verdict("The price: Â inherits the critic's error, a bias that more episodes do not remove; G_t has none",
               bias > 3 * stderr and rows[0][1] < 3 * rows[0][2],
               f"Â: {bias:.4f} = {bias / stderr:.1f} standard errors (> 3); G_t: {rows[0][1] / rows[0][2]:.1f} (< 3)")
print("    GAE(λ) (lesson 7) moves between the two: λ = 1 is G_t − V, λ = 0 the one-step Â.")
lesson.check_note(
    "E6",
    evidence=[
        f"Var[ĝ] per episode: {first:.3f} with the sampled return, {variances['G_t − V_ψ(s_t)']:.3f} with V_ψ as a "
        f"baseline, {variances['r + γV_ψ(s′) − V_ψ(s)']:.3f} with the critic's one-step Â; all three average to ∇J, "
        f"the last with a bias of {rows[2][1]:.4f} from the critic's error.",
        "The reward here is a fixed rule (the exits pay 0.3 and 1): nothing about the reward is estimated, so "
        "there is no reward-model variance to reduce. What is noisy is the gradient's weight Ψ.",
    ],
    conclusion="The value model (V_ψ, the critic) lowers the variance of the policy-gradient estimate by "
               "replacing sampled returns with its predictions. The same note says it right elsewhere: "
               "'Value Model是为了减少方差而设计出的深度模型'.",
    holds=first > variances["G_t − V_ψ(s_t)"] > variances["r + γV_ψ(s′) − V_ψ(s)"],
    measured=f"Var[ĝ] {first:.3f} > {variances['G_t − V_ψ(s_t)']:.3f} > {variances['r + γV_ψ(s′) − V_ψ(s)']:.3f} "
             "with a fixed reward rule",
)

# %% Step 3 — AC-1: actor and critic together
lesson.step(
    "Actor–critic: both learn at once, note 004 (方法4–6)",
    "critic: minimise (V_ψ(s) − (r + γV_ψ(s′)))²",
    "actor:  θ ← θ + α · mean_t[∇log π_θ(a_t|s_t) Â_t]",
    "        Â_t = r_t + γV_ψ(s_{t+1}) − V_ψ(s_t), a constant in the actor's gradient",
    ids=["AC-1"])
V_star = optimal_values()
g = lesson.generator(3)
actor = torch.zeros(N_CELLS, 2, dtype=f64, requires_grad=True)  # logits: starts uniform
critic = torch.zeros(N_CELLS, dtype=f64, requires_grad=True)
actor_opt = torch.optim.SGD([actor], lr=2.0)
critic_opt = torch.optim.SGD([critic], lr=2.0)  # 2 × ½(V − y)²: each step moves V by the mean error
state = torch.full((N_ENVS,), START)
iterations = 400 if lesson.long else 200
trace = {"J": [], "critic_error": []}
rows = []
for iteration in range(iterations + 1):
    V_pi = exact_values(actor.detach())
    trace["J"].append(float(V_pi[START]))
    trace["critic_error"].append(float((critic.detach() - V_pi).abs().max()))
    if iteration % (iterations // 8) == 0:
        rows.append([iteration, trace["J"][-1], trace["critic_error"][-1],
                     *F.softmax(actor.detach(), -1)[:, 1].tolist()])
    if iteration == iterations:
        break
    batch, state = collect(actor, state, WINDOW, g)
    critic_step(critic, critic_opt, batch)  # 1. the critic follows the current policy
    cells_b, actions_b, rewards_b, after_b, ended_b = batch
    with torch.no_grad():  # 2. Â from the critic: a number per step, no gradient through it
        advantages = td_residuals(rewards_b, critic[cells_b], gamma=GAMMA, next_values=critic[after_b],
                                  terminations=ended_b)
    logp_taken = F.log_softmax(actor, -1)[cells_b, actions_b]
    actor_opt.zero_grad()  # 3. the actor climbs E[∇log π · Â]
    (-score_function_surrogate(logp_taken, advantages).mean()).backward()
    actor_opt.step()
table(["iteration", "J = V^π(start)", "max |V_ψ − V^π|", "π(→|0)", "π(→|1)", "π(→|2)", "π(→|3)", "π(→|4)"],
      rows, digits=3)
print("\n    π(→|s) is the probability of stepping right in cell s.")
print(f"    J* = V*(start) = {float(V_star[START]):.3f} (value iteration: always step right). "
      f"The uniform policy gets {trace['J'][0]:.3f}:")
print("    the +0.3 exit is one step away, the +1 exit four.")
final_right = F.softmax(actor.detach(), -1)[:, 1]
J_star = float(V_star[START])
lesson.verdict("The critic's values show the actor that the far exit is worth more, and the policy turns right; the "
               "critic keeps up with the moving policy",
               trace["J"][-1] > trace["J"][0] and trace["J"][-1] > 0.9 * J_star and float(final_right[1:].min()) > 0.5
               and trace["critic_error"][-1] < 0.1,
               f"J {trace['J'][0]:.3f} → {trace['J'][-1]:.3f} (> 0.9 J* = {0.9 * J_star:.3f}); π(→|s) > 0.5 in cells "
               f"1–4; final max |V_ψ − V^π| = {trace['critic_error'][-1]:.3f} < 0.1")
lesson.verdict("Cell 0 learns last: once the policy heads right from the start, it is rarely visited",
               int(final_right.argmin()) == 0, f"π(→|0) = {float(final_right[0]):.3f}, the lowest of the five cells")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(trace["J"], label="J(π_θ) (exact)")
axes[0].axhline(float(V_star[START]), color="k", ls="--", lw=1, label="J* (value iteration)")
axes[0].set(xlabel="iteration", ylabel="V^π(start)", title="the actor improves")
axes[1].plot(trace["critic_error"], color="tab:orange")
axes[1].set(xlabel="iteration", ylabel="max_s |V_ψ(s) − V^π(s)|", title="the critic tracks V^π", yscale="log")
for ax in axes:
    ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle("AC-1: one-step actor–critic on the corridor")
lesson.save(fig, "actor_critic.png")


# %% Helpers for the PPO runs
class LiveMetrics:
    """A `stop_when` hook for `envs.train.train` that never stops the run: every `every` updates it
    reads the run's metrics.jsonl (the writer flushes each line) and prints one line with the means
    of the updates since the previous line."""

    COLUMNS = (("steps", "step", "{:>7.0f}"), ("return", "charts/episodic_return", "{:>7.1f}"),
               ("approx_kl", "losses/approx_kl", "{:>9.4f}"), ("clipfrac", "losses/clipfrac", "{:>8.3f}"),
               ("expl. var", "losses/explained_variance", "{:>9.3f}"), ("entropy", "losses/entropy", "{:>7.3f}"))

    def __init__(self, metrics_path, every, extra=()):
        self.path, self.every, self.updates, self.printed = metrics_path, every, 0, 0
        self.columns = self.COLUMNS[:2] + tuple(extra) + self.COLUMNS[2:]

    def __call__(self, agent, global_step) -> bool:
        self.updates += 1
        if self.updates % self.every:
            return False
        if self.printed == 0:  # the header, once train() has announced the run
            print("    " + "  ".join(f"{label:>{len(fmt.format(0))}}" for label, _, fmt in self.columns), flush=True)
        records = read_metrics(self.path)[self.printed:]
        self.printed += len(records)
        cells = []
        for _, name, fmt in self.columns:
            values = [r[name] for r in records if r.get(name) is not None]
            if name == "step":
                values = values[-1:]
            width = len(fmt.format(0))
            cells.append(fmt.format(statistics.fmean(values)) if values else f"{'—':>{width}}")
        print("    " + "  ".join(cells), flush=True)
        return False


def episode_ends(agent, env_id, num_envs, steps, seed, greedy=False):
    """Run the policy through the loop's vector env (sampling as in training, or greedily); count
    terminations and truncations and collect V(final obs) and V(reset obs) where a time limit cut an
    episode."""
    envs = make_vector_env(env_id, num_envs, CPU)
    obs = envs.reset(seed=seed)
    counts = {"terminated": 0, "truncated": 0}
    v_final, v_reset = [], []
    with torch.no_grad():
        for _ in range(steps):
            actions, _, _ = agent.act(obs, greedy=greedy)
            step = envs.step(actions)
            counts["terminated"] += int(step.terminated.sum())
            counts["truncated"] += int(step.truncated.sum())
            if bool(step.truncated.any()):
                cut = step.truncated
                v_final += agent.value(step.final_obs[cut]).tolist()  # the bootstrap the loop uses
                v_reset += agent.value(step.obs[cut]).tolist()  # the next episode's first state
            obs = step.obs
    envs.close()
    return counts, v_final, v_reset


FLAPPY_STEPS = 1_200_000 if lesson.long else 200_000

# %% Step 4 — AC-2: PPO's Algorithm 1 on CartPole
lesson.step("PPO, Algorithm 1 (N actors × T steps, GAE, K epochs), notes 001 and 003", ids=["AC-2"])
cartpole = TrainConfig(**{**preset_for("CartPole-v1"), **CARTPOLE, **QUIET, "seed": lesson.seed,
                          "out": str(lesson.out / "cartpole")})
nt = cartpole.num_envs * cartpole.num_steps
c = cartpole
print(f"    for iteration = 1 … {c.num_iterations}:                                  (envs.train.train)")
print(f"      1. N = {c.num_envs} envs × T = {c.num_steps} steps of π_θold → {nt} rows      envs.train.collect")
print("         a row: s, a, log π_old(a|s), V(s), r, terminated, truncated, V(s_next)")
print(f"      2. Â ← GAE(γ = {c.gamma}, λ = {c.gae_lambda});  V^targ ← Â + V        RolloutBuffer.batch")
print(f"      3. K = {c.update_epochs} epochs × {nt // c.minibatch_size} minibatches of M = {c.minibatch_size}"
      "           core.ppo.ppo_update")
print(f"         minimise −L^CLIP(ε = {c.clip_coef}) + c₁·½(V − V^targ)² − c₂H     "
      f"(CL-4; c₁ = {c.vf_coef}, c₂ = {c.ent_coef:g})   core.ppo.ppo_loss")
print(f"      4. θ_old ← θ      ({c.update_epochs * nt // c.minibatch_size} Adam steps per iteration; learning rate "
      f"{c.learning_rate:g}, annealed to 0)\n")
for name in ("losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "losses/entropy"):
    for i, line in enumerate(textwrap.wrap(METRICS[name], 68)):
        print(f"    {name.split('/')[1] if i == 0 else '':<20}{line}")
print(f"    (entropy of a uniform choice between CartPole's 2 actions: ln 2 = {math.log(2):.3f})")
print("    Every line below averages the updates since the line before; 'return' averages the episodes that")
print("    ended in them.\n")
watch = LiveMetrics(lesson.out / "cartpole" / "metrics.jsonl", every=6)
started = time.perf_counter()
cartpole_run = train(cartpole, stop_when=watch)
cartpole_seconds = time.perf_counter() - started
greedy = evaluate_policy(cartpole_run["agent"], "CartPole-v1", episodes=20, seed=10_000)
print(f"\n    {cartpole_run['global_step']} steps in {cartpole_seconds:.1f} s. Greedy evaluation on 20 new seeds: "
      f"mean {statistics.fmean(greedy):.1f}, min {min(greedy):.0f}")
print("    (500 is the time limit; 475 counts as solved).")


def logged(run, name):
    """The per-update values of one metric in a run's history (updates that logged it)."""
    return [h[name] for h in run["history"] if h.get(name) is not None]


def quarter_means(values):
    """Means of the first and the last quarter of a series."""
    n = max(1, len(values) // 4)
    return statistics.fmean(values[:n]), statistics.fmean(values[-n:])


lesson.verdict("PPO solves CartPole: the greedy policy's mean return reaches 475", statistics.fmean(greedy) >= 475,
               f"mean {statistics.fmean(greedy):.1f} over 20 greedy episodes ≥ 475")
returns_q = quarter_means(logged(cartpole_run, "charts/episodic_return"))
kl_q = logged(cartpole_run, "losses/approx_kl")
ev_q, entropy_q = (quarter_means(logged(cartpole_run, name))
                   for name in ("losses/explained_variance", "losses/entropy"))
median_kl = statistics.median(kl_q)
lesson.verdict("Read the columns together: the return climbs while approx_kl stays around 10⁻³–10⁻²; the critic's "
               "explained variance rises; the entropy falls from ln 2 as the policy commits",
               returns_q[1] > 2 * returns_q[0] and 3e-4 <= median_kl <= 3e-2 and ev_q[1] > ev_q[0]
               and entropy_q[1] < entropy_q[0] < math.log(2) + 1e-6,
               f"return {returns_q[0]:.1f} → {returns_q[1]:.1f} (first vs last quarter, > 2×); median approx_kl "
               f"{median_kl:.4f} within [3e-4, 3e-2]; explained variance {ev_q[0]:.2f} → {ev_q[1]:.2f}; entropy "
               f"{entropy_q[0]:.3f} → {entropy_q[1]:.3f}")
lesson.verdict("The training return reads lower than the greedy one: actions are still sampled, and short episodes "
               "end (and get counted) more often than long ones", returns_q[1] < statistics.fmean(greedy),
               f"last quarter's training return {returns_q[1]:.1f} < greedy {statistics.fmean(greedy):.1f}")

# %% Step 5 — the same loop on Flappy Bird
lesson.step("One loop, two games: Flappy Bird, the game of note 003's practice run (简单的实践)",
            "train(TrainConfig(env_id='flappy', …)): the same Algorithm 1, another environment",
            ids=["AC-2"])
preset = TrainConfig(**preset_for("flappy"))
flappy = TrainConfig(**{**preset_for("flappy"), **FLAPPY_CHANGES, **QUIET, "env_id": "flappy",
                        "total_steps": FLAPPY_STEPS, "seed": lesson.seed, "out": str(lesson.out / "flappy")})
rows = [[field, str(getattr(preset, field)), str(getattr(flappy, field))]
        for field in ("num_envs", "num_steps", "minibatch_size", "update_epochs", "learning_rate", "anneal_lr",
                      "gamma", "gae_lambda", "ent_coef", "total_steps")]
table(["TrainConfig field", "preset_for('flappy')", "this run"], rows)
print(f"\n    Same function, same network shape (12 features in, 2 actions out), {flappy.num_envs} games stepped")
print("    as one tensor. Reward: +0.1 per frame alive, +1 per pipe, −1 on a crash. A return of 8.9 is a")
print("    bird that stays up until the first pipe and hits it; 'score' counts the pipes passed.\n")
watch = LiveMetrics(lesson.out / "flappy" / "metrics.jsonl", every=max(1, flappy.num_iterations // 8),
                    extra=(("score", "charts/score", "{:>6.2f}"),))
started = time.perf_counter()
flappy_run = train(flappy, stop_when=watch)
flappy_seconds = time.perf_counter() - started
flappy_greedy = evaluate_policy(flappy_run["agent"], resolve_env_id("flappy"), episodes=20, cap=100, seed=10_000)
print(f"\n    {flappy_run['global_step']} steps in {flappy_seconds:.1f} s. "
      "Greedy evaluation on 20 new seeds, capped at")
print(f"    100 pipes: mean score {statistics.fmean(flappy_greedy):.1f}, best {max(flappy_greedy):.0f}.")
print("    At first nearly every bird hits the first pipe, the returns are all alike and the advantages are")
print("    mostly noise.")
score_q = quarter_means(logged(flappy_run, "charts/score"))
flappy_returns_q = quarter_means(logged(flappy_run, "charts/episodic_return"))
lesson.verdict("Once a few birds slip through the gap, the return and the score start to rise",
               score_q[1] > score_q[0] and flappy_returns_q[1] > flappy_returns_q[0],
               f"score {score_q[0]:.2f} → {score_q[1]:.2f}, return {flappy_returns_q[0]:.1f} → "
               f"{flappy_returns_q[1]:.1f} (first vs last quarter of the updates)")
print("    For a bird that keeps going, run the preset in full:")
print(f"    python -m envs.train ({preset.total_steps:,} steps).")

fig, axes = plt.subplots(2, 5, figsize=(17, 6))
for row, (game, run) in enumerate((("CartPole-v1", cartpole_run), ("Flappy Bird", flappy_run))):
    history = run["history"]
    steps = [h["step"] for h in history]
    for col, (name, label) in enumerate((("charts/episodic_return", "episodic return"),
                                         ("losses/approx_kl", "approx_kl"), ("losses/clipfrac", "clipfrac"),
                                         ("losses/explained_variance", "explained variance"),
                                         ("losses/entropy", "entropy"))):
        points = [(s, h[name]) for s, h in zip(steps, history) if h.get(name) is not None]
        x, y = zip(*points)
        axes[row, col].plot(x, y, color=f"C{col}", alpha=0.4 if col == 0 else 1.0)
        if col == 0:  # the per-update mean return is noisy: add a running mean over 5 logged updates
            smooth = [statistics.fmean(y[max(0, i - 4):i + 1]) for i in range(len(y))]
            axes[row, col].plot(x, smooth, color="C0")
        axes[row, col].set(xlabel="environment steps", title=f"{game}: {label}")
        axes[row, col].grid(alpha=0.3)
fig.suptitle("AC-2: the same PPO loop (envs.train.train) on two games")
lesson.save(fig, "ppo_cartpole_flappy.png")

# %% Step 6 — AD-5 in the loop: where next_values comes from
lesson.step(
    "Episode ends in the loop (AD-5): terminated → 0, truncated → V(final obs)",
    "δ_t = r_t + γ(1 − terminated_t) V(s_{t+1}) − V(s_t)",
    "V(s_{t+1}) is V(step.final_obs): the state step t led to, also where the episode ended")
rows, bootstrap = [], {}
for game, env_id, agent, n, steps, greedy in (("CartPole-v1", "CartPole-v1", cartpole_run["agent"], 8, 1500, True),
                                              ("Flappy Bird", "flappy", flappy_run["agent"], 64, 400, False)):
    counts, v_final, v_reset = episode_ends(agent, env_id, n, steps, seed=lesson.seed + 20_000, greedy=greedy)
    total = counts["terminated"] + counts["truncated"]
    bootstrap[game] = statistics.fmean(v_final) if v_final else 0.0
    rows.append([game, n * steps, total, counts["terminated"], counts["truncated"],
                 f"{counts['truncated'] / max(total, 1):.0%}",
                 statistics.fmean(v_final) if v_final else "—", statistics.fmean(v_reset) if v_reset else "—"])
table(["game", "steps", "ends", "terminated", "truncated", "% truncated", "V(final obs)", "V(reset obs)"],
      rows, digits=2)
v_cut = bootstrap["CartPole-v1"]
print()
lesson.verdict("CartPole-v1 cuts episodes at 500 steps (truncations), and the state a cut episode ends in is worth "
               "about 1/(1 − γ): the bootstrap matters", rows[0][4] > 0 and v_cut > 0.5 / (1 - cartpole.gamma),
               f"{rows[0][4]} truncations; mean V(final obs) {v_cut:.1f} > half of 1/(1 − γ) = "
               f"{0.5 / (1 - cartpole.gamma):.0f}")
lesson.verdict("Flappy Bird's episodes end in crashes (terminations)", rows[1][3] > 0 and rows[1][4] == 0,
               f"{rows[1][3]} terminations, {rows[1][4]} truncations")
print("    Rollouts of the trained policies: CartPole greedily (its best play, so that episodes reach the limit),")
print("    Flappy Bird sampling as in training. CartPole-v1 cuts an episode at 500 steps:")
print("    a truncation, not a failure, the pole is still up. The loop stores V(step.final_obs), the state the")
print(f"    episode was cut in, as next_values, so δ keeps γ·V(s_T) ≈ {cartpole.gamma} × {v_cut:.1f} = "
      f"{cartpole.gamma * v_cut:.1f}.")
print("    Treating the cut as a crash would drop that term and teach the critic that states near the limit are")
print("    worth nothing. After autoreset, step.obs already holds the next episode's first state; here its value")
print("    is close (every upright CartPole state is worth about 1/(1 − γ) = 50), but it is a different state,")
print("    and in general a different value. Flappy Bird's truncations would come from the 20 000-frame limit")
print("    or a score cap.")

# %% Step 7 — Table 1 of the PPO paper, in miniature
# The harness is its own command, `python -m lessons.table1` (the same runs, one JSON line at the end).
table1_config = Table1Config(long=lesson.long, seed=lesson.seed, out=str(lesson.out / "table1"))
GAMES = games_of(table1_config)
SEEDS = [lesson.seed + k for k in range(table1_config.seeds)]

lesson.step(
    "Table 1 of the PPO paper: which surrogate objective? (PPO裁剪 vs PPO惩罚, note 004)",
    "no clipping or penalty   L = ρÂ                              objective='ratio'",
    "clipping                 L = min(ρÂ, clip(ρ, 1−ε, 1+ε)Â)     objective='clip'",
    "KL penalty, β fixed      L = ρÂ − β KL[π_old, π_θ]           objective='kl_penalty'",
    "KL penalty, adaptive β   the same, β halved or doubled toward d_targ (TR-3)",
    "normalised score = (score − random) / (best setting − random), per game, then averaged",
    ids=["AC-2"])
ours: dict[str, float] = {}
if not TABLE1:
    table(["setting", "PPO paper (7 MuJoCo tasks × 3 seeds)"], [[name, paper] for name, _, paper in SETTINGS], digits=2)
    print("\n    The paper's numbers. Without a trust region, the many epochs of minibatch steps on one batch move")
    print("    the policy too far: −0.39 is worse than a random policy. Run this step for real with --table1")
    print(f"    ({len(SETTINGS)} settings × {len(SEEDS)} seeds on CartPole, about 5 minutes on 2 busy cores;")
    print("    with --long as well, Flappy Bird too, about 10 minutes), or on its own: python -m lessons.table1.")
else:
    result = run_table1(table1_config, log=lambda line: print(line, flush=True))
    ours = {row["name"]: row["mean_normalised"] for row in result["settings"]}
    headers = ["setting"]
    for game in GAMES:
        headers += [f"{game} score", "norm."]
    headers += ["normalised" if len(GAMES) == 1 else "mean norm.", "PPO paper"]
    rows = []
    for row in result["settings"]:
        cells = [row["name"]]
        for game in GAMES:
            cells += [row["mean_score"][game], row["normalised"][game]]
        rows.append([*cells, row["mean_normalised"], row["paper"]] if len(GAMES) > 1 else [*cells, row["paper"]])
    table(headers if len(GAMES) > 1 else headers[:2] + headers[3:], rows, digits=2)
    no_clip = SETTINGS[0][0]
    rank = 1 + sum(ours[name] > ours[no_clip] for name in ours)
    groups = {"clipping": [], "adaptive KL": [], "fixed KL": []}
    for name in ours:
        for group in groups:
            if name.lower().startswith(group.split()[0]):
                groups[group].append(ours[name])
    print(f"\n    {len(GAMES) * len(SETTINGS) * len(SEEDS)} runs in {result['seconds']:.0f} s. Score of a run: "
          "mean return over the last quarter of its updates.")
    print(f"    Normalised: no clipping {ours[no_clip]:.2f}, rank {rank} of {len(ours)};")
    print("    " + "; ".join(f"{group} {min(v):.2f}–{max(v):.2f}" for group, v in groups.items()) + ".")
    lesson.verdict("Without clipping or penalty the objective suffers: its row ranks among the last three",
                   rank >= len(ours) - 2, f"rank {rank} of {len(ours)}, normalised {ours[no_clip]:.2f}")
    best_clip = ours["Clipping, ε = 0.2"]
    lesson.verdict("Clipping at ε = 0.2 ties with the best setting (within 0.1, the noise of three short seeds)",
                   best_clip >= max(ours.values()) - 0.1,
                   f"normalised {best_clip:.2f}, best {max(ours.values()):.2f}")
    print("    With ten epochs of minibatch steps on each batch and a large learning")
    print("    rate, plain ρÂ keeps pushing the same samples long after the policy has left the data that")
    print("    justified the step. Clipping stops a sample's pull once its ratio leaves [1−ε, 1+ε]; a penalty")
    print("    pulls back by β·KL, and how much is enough depends on the problem: too small a β lets the policy")
    print("    run, too large a β holds it still. In the paper, over 21 runs of a million steps, clipping at")
    print("    ε = 0.2 came first and needs no controller; that is why it became the default. Three short seeds")
    print("    are noisy here, so rows within about 0.1 of each other are a tie.")

fig, ax = plt.subplots(figsize=(9, 4.6))
names = [name for name, _, _ in SETTINGS]
positions = range(len(names))
width = 0.4 if ours else 0.6
ax.barh([p + (width / 2 if ours else 0) for p in positions], [paper for _, _, paper in SETTINGS], height=width,
        color="tab:gray", label="PPO paper (MuJoCo)")
if ours:
    ax.barh([p - width / 2 for p in positions], [ours[name] for name in names], height=width, color="tab:blue",
            label=f"here ({', '.join(GAMES)}; {len(SEEDS)} seeds)")
ax.set_yticks(list(positions), names)
ax.invert_yaxis()
ax.axvline(0, color="k", lw=0.8)
ax.set_xlabel("normalised score (random policy 0, best setting 1)")
ax.set_title("Table 1 of the PPO paper" + (", in miniature" if ours else " (run with --table1 to add ours)"))
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
ax.grid(axis="x", alpha=0.3)
lesson.save(fig, "table1.png")

# %%
lesson.done()
