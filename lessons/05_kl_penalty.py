"""Lesson 5 — The KL penalty and the adaptive β.

What it teaches
    PPO's first variant puts TRPO's constraint into the objective as a penalty −β·KL and takes
    ordinary gradient steps. A fixed β is hard to choose: the KL an update produces depends on
    the problem and drifts during training. The adaptive rule doubles β when the measured KL is
    far above its target and halves it when far below, and it never touches the learning rate.
    RLHF libraries use a smoother proportional version of the same controller. Unbounded, the
    doubling rule can halve β to nothing while the KL is still growing slowly and then cannot
    raise it back in time: bounds on β, relative to its initial value, and the proportional
    rule's small steps prevent that collapse (step 5).

Notes followed
    002_c297ee72da052b00.txt (PPO paper notes): "Problem: how to regularize": L^KL = E[ρA] − β E[KL[π_old,
        π_θ]], "很难找到一个单一的 β 能够一直表现的很好" (no single β works well throughout);
        "Adaptive KL Penalty Coefficient": the threshold d_target (阈值), raise β above
        1.5·d_target, lower it below.
    000_8217fa03f8526d4c.txt (RLHF objective): the last paragraph: 懲罰項 (penalty term), 正則化項
        (regulariser), 信賴域 (trust region), and the claim that the learning rate shrinks (縮小學習率).
    004_27c6b9375ccb306e.txt (PG to GRPO): "PPO惩罚": the constraint moved into the objective like a
        Lagrange multiplier (拉格朗日乘数法), with β adjusted during training.

Formula IDs: TR-2, TR-3, TR-4. Check the note: E3 (β changes, the learning rate does not).

Run:  python -m lessons run 5 [--step] [--long]

Deviations from the papers
    A contextual bandit (32 contexts × 6 actions, noisy rewards) trained by `core.ppo.ppo_update`
    with the "kl_penalty" objective: Adam, 4 epochs of 4 minibatches per update. The KL in the
    loss and the d fed to the controller are k3 estimates of KL[π_old‖π_θ] on the batch's
    actions (lesson 8), as in `core.ppo`; the paper's d is the same quantity. The proportional
    controller (TR-4) comes from Ziegler et al. 2019, not from the PPO paper. Step 5 drives the
    controllers with a simulated KL to π_ref (a stylised model of an RLHF run, written out in the
    step), not with a language model: the measured runs are in llm/README.md.
"""

FORMULAS = ("TR-2", "TR-3", "TR-4")

# %% Setup: a contextual bandit and a tabular policy with a value per context
import math

import torch
import torch.nn.functional as F

from core.advantages import gae
from core.kl import (
    AdaptiveKLController,
    FixedKLController,
    ProportionalKLController,
    categorical_kl,
    make_kl_controller,
)
from core.ppo import Evaluation, PPOConfig, ppo_update
from core.surrogates import kl_penalty_surrogate
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
torch.manual_seed(lesson.seed)

N_CONTEXTS, N_ACTIONS, BATCH = 32, 6, 512
REWARDS = 0.5 * torch.randn(N_CONTEXTS, N_ACTIONS, generator=lesson.generator(0))  # r(context, action)
NOISE = 1.0  # each observed reward is r + NOISE·N(0, 1): the policy keeps moving for many updates


class BanditPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(N_CONTEXTS, N_ACTIONS))
        self.values = torch.nn.Parameter(torch.zeros(N_CONTEXTS))

    def evaluate(self, minibatch):
        """What ppo_update needs: new log π of the stored actions, entropy, V."""
        logp_all = F.log_softmax(self.logits[minibatch["obs"]], -1)  # (B, A)
        logp = logp_all.gather(1, minibatch["actions"][:, None]).squeeze(1)  # (B,)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return Evaluation(logp, entropy, self.values[minibatch["obs"]])

    def expected_reward(self):
        with torch.no_grad():
            return float((F.softmax(self.logits, -1) * REWARDS).sum(-1).mean())


def collect(policy, g):
    contexts = torch.randint(0, N_CONTEXTS, (BATCH,), generator=g)
    with torch.no_grad():
        logp_all = F.log_softmax(policy.logits[contexts], -1)
        actions = torch.multinomial(logp_all.exp(), 1, generator=g).squeeze(1)
        rewards = REWARDS[contexts, actions] + NOISE * torch.randn(BATCH, generator=g)
        values = policy.values[contexts]
        logp = logp_all.gather(1, actions[:, None]).squeeze(1)
    # one-step episodes: GAE over a time axis of length 1 gives A = r − V(context)
    advantages = gae(rewards[:, None], values[:, None], gamma=1.0, gae_lambda=1.0).squeeze(1)
    return {"obs": contexts, "actions": actions, "logprobs": logp, "values": values,
            "advantages": advantages, "returns": advantages + values}


def train(controller, updates, seed, lr=0.1):
    """PPO with the KL-penalty objective; returns per-update KL, β, learning rate and J."""
    policy = BanditPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    config = PPOConfig(objective="kl_penalty", minibatch_size=128, update_epochs=4)
    g = lesson.generator(seed)
    trace = {"kl": [], "beta": [], "lr": [], "J": [policy.expected_reward()]}
    for _ in range(updates):
        trace["beta"].append(controller.beta)  # the β this update used
        stats = ppo_update(policy.evaluate, collect(policy, g), optimizer, config, kl_controller=controller,
                           generator=g)
        trace["kl"].append(stats["ppo/kl_after_update"])  # d: measured after the update
        trace["lr"].append(optimizer.param_groups[0]["lr"])
        trace["J"].append(policy.expected_reward())
    return trace


UPDATES = 60 if lesson.long else 25
TARGET = 0.01

# %% Step 1 — TR-2: the penalised objective, value and gradient against a hand computation
lesson.step("The KL-penalised surrogate, note 002", ids=["TR-2"])

old_logits = torch.tensor([0.2, -0.1, 0.4])
logits = torch.tensor([0.5, -0.3, 0.1], requires_grad=True)
action, advantage, beta = 0, 1.5, 0.7
logp = F.log_softmax(logits, -1)
value = kl_penalty_surrogate(logp[action], F.log_softmax(old_logits, -1)[action], torch.tensor(advantage),
                             categorical_kl(old_logits, logits), beta=beta)
(grad,) = torch.autograd.grad(value, logits)
# By hand: ρ = π(a)/π_old(a); KL[π_old‖π] = Σ π_old log(π_old/π);
#   ∂(ρA)/∂θ_j = ρA(1[j=a] − π_j),   ∂KL/∂θ_j = π_j − π_old_j   (softmax logits θ)
pi, pi_old = F.softmax(logits, -1).tolist(), F.softmax(old_logits, -1).tolist()
rho = pi[action] / pi_old[action]
kl_hand = sum(q * (torch.tensor(q).log() - torch.tensor(p).log()).item() for q, p in zip(pi_old, pi))
value_hand = rho * advantage - beta * kl_hand
grad_hand = [rho * advantage * ((j == action) - pi[j]) - beta * (pi[j] - pi_old[j]) for j in range(3)]
table(["", "value", "∂/∂θ₀", "∂/∂θ₁", "∂/∂θ₂"],
      [["core.surrogates.kl_penalty_surrogate + autograd", float(value.detach()), *grad.tolist()],
       ["by hand", value_hand, *grad_hand]], digits=6)
print(f"\n    ρ = {rho:.4f}, A = {advantage}, KL[π_old‖π_θ] = {kl_hand:.5f}, β = {beta}")
hand_gap = max(abs(float(value.detach()) - value_hand), *(abs(a - b) for a, b in zip(grad.tolist(), grad_hand)))
lesson.verdict("core's surrogate and autograd agree with the hand computation, value and gradient", hand_gap < 1e-5,
               f"largest difference {hand_gap:.1e} < 1e-5 (float32)")
print("    The penalty's gradient β(π − π_old) pulls every probability back toward π_old; its pull")
print("    grows with the distance, like a spring, instead of TRPO's hard wall at δ.")

# %% Step 2 — one fixed β is hard to choose
lesson.step("A fixed β (很难找到一个单一的 β)",
            "L^KLPEN = E[ρA] − β E[KL[π_old ‖ π_θ]]   with β constant",
            ids=["TR-2"])

fixed_runs = {beta: train(FixedKLController(beta), UPDATES, seed=1) for beta in (0.03, 0.3, 3.0)}
rows = []
for beta, trace in fixed_runs.items():
    early, late = trace["kl"][:5], trace["kl"][-5:]
    rows.append([beta, sum(early) / 5, sum(late) / 5, max(trace["kl"]) / min(trace["kl"]), trace["J"][-1]])
best_possible = float(REWARDS.max(-1).values.mean())
table(["fixed β", "KL, first 5 updates", "KL, last 5 updates", "max/min KL", f"J after {UPDATES}"], rows)
print(f"\n    target d_targ = {TARGET}; J of the best policy = {best_possible:.3f}, of the uniform start = "
      f"{fixed_runs[0.03]['J'][0]:.3f}.")
small, large = fixed_runs[0.03], fixed_runs[3.0]
lesson.verdict("A small β lets early updates jump far past the target; a large β holds the policy back (its early "
               "steps are several times shorter, and its J after the run is the lowest of the three)",
               rows[0][1] > 1.5 * TARGET and rows[2][1] < rows[0][1] / 3 and rows[2][4] < min(rows[0][4], rows[1][4]),
               f"β = 0.03: early KL {rows[0][1]:.3f} > 1.5·d_targ; β = 3: early KL {rows[2][1]:.4f} < "
               f"{rows[0][1]:.3f}/3, J {rows[2][4]:.3f} < {min(rows[0][4], rows[1][4]):.3f}")
lesson.verdict("The KL an update produces is not constant during a run either, so the right β changes as training "
               "goes", min(row[3] for row in rows) > 2,
               f"max/min KL within each run ≥ {min(row[3] for row in rows):.1f} > 2")

# %% Step 3 — TR-3: the adaptive β and the learning rate it leaves alone
lesson.step("Adaptive KL penalty coefficient, note 002", ids=["TR-3"])

# First the rule on its own, on hand-picked measurements:
controller = AdaptiveKLController(beta=1.0, target=TARGET)
rows = []
for d in (0.001, 0.05, 0.012, 0.02, 0.0066, 0.0067):
    before = controller.beta
    after = controller.update(d)
    if d < TARGET / 1.5:
        rule = "d < d_targ/1.5 → β/2"
    elif d > 1.5 * TARGET:
        rule = "d > 1.5·d_targ → 2β"
    else:
        rule = "in band → keep β"
    rows.append([d, rule, before, after])
table(["measured d", "rule (d_targ = 0.01)", "β before", "β after"], rows)
expected_factor = {"β/2": 0.5, "2β": 2.0, "keep β": 1.0}
rule_ok = all(abs(after / before - expected_factor[rule.split("→ ")[1]]) < 1e-12 for _, rule, before, after in rows)
lesson.verdict("The controller halves, doubles or keeps β exactly as the rule says", rule_ok,
               "β after/β before: " + ", ".join(f"{after / before:g}" for _, _, before, after in rows))

# Then in training, starting from a β far too small:
# (bound=None: the paper's rule as written; core.kl's default keeps β within 100× of its start, step 5)
adaptive = train(AdaptiveKLController(beta=0.03, target=TARGET, bound=None), UPDATES, seed=1)
warm = 8
in_band = sum(TARGET / 2 <= d <= 2 * TARGET for d in adaptive["kl"][warm:]) / len(adaptive["kl"][warm:])
median_late = sorted(adaptive["kl"][warm:])[len(adaptive["kl"][warm:]) // 2]
first_kl, last_beta, last_J = adaptive["kl"][0], adaptive["beta"][-1], adaptive["J"][-1]
print(f"\n    In training from β = 0.03: the first update moves KL = {first_kl:.3f}, far above the target.")
print(f"    β climbs to {last_beta:.3g}; after {warm} updates the median KL is {median_late:.4f}, with {in_band:.0%}")
print(f"    of the updates within [d_targ/2, 2·d_targ]. J after {UPDATES} updates: {last_J:.3f}.")
lesson.verdict("Starting far too small, adaptive β climbs until the KL of an update settles near d_targ",
               first_kl > 1.5 * TARGET and last_beta > 0.03 and TARGET / 2 <= median_late <= 2 * TARGET,
               f"first KL {first_kl:.3f} > 1.5·d_targ; β 0.03 → {last_beta:.3g}; median KL after {warm} updates "
               f"{median_late:.4f} within [d_targ/2, 2·d_targ]")

doublings = sum(b2 == 2 * b1 for b1, b2 in zip(adaptive["beta"], adaptive["beta"][1:]))
# Each β change follows the KL measured by the update before it, and only the rule's changes happen.
follows_rule = all(
    b2 == (2 * b1 if d > 1.5 * TARGET else b1 / 2 if d < TARGET / 1.5 else b1)
    for d, b1, b2 in zip(adaptive["kl"], adaptive["beta"], adaptive["beta"][1:]))
lesson.check_note(
    "E3",
    evidence=[
        f"Over {UPDATES} updates the measured KL ranged from {min(adaptive['kl']):.4f} to {max(adaptive['kl']):.3f}; "
        f"β was doubled {doublings} times after a KL above 1.5·d_targ and ended at {adaptive['beta'][-1]:.3g}.",
        f"The optimiser's learning rate was {adaptive['lr'][0]} at every update "
        f"(min {min(adaptive['lr'])}, max {max(adaptive['lr'])}).",
        "The PPO paper's rule (its section 4) changes β and only β.",
    ],
    conclusion="Adaptive KL raises the penalty weight β when the KL passes 1.5·d_targ and lowers it below "
               "d_targ/1.5; the learning rate stays as it is. Scaling the learning rate by the measured KL "
               "is a different scheme that some libraries use.",
    holds=doublings > 0 and follows_rule and min(adaptive["lr"]) == max(adaptive["lr"]),
    measured=f"β doubled {doublings} times, every change of β the rule's for the KL before it: {follows_rule}; "
             f"learning rate {min(adaptive['lr'])}–{max(adaptive['lr'])}",
)

# %% Step 4 — TR-4: the proportional controller of RLHF
lesson.step("A smoother β: the proportional controller (beyond the notes)", ids=["TR-4"])

horizon = BATCH  # H: β may change by at most 0.2·n/H = 20% per update of n = 512 samples
proportional = train(ProportionalKLController(beta=0.03, target=TARGET, horizon=horizon), UPDATES, seed=1)
# The same formula on its own: e is clipped to ±0.2, β moves by e·n/H.
controller = ProportionalKLController(beta=1.0, target=TARGET, horizon=horizon)
rows = []
for d in (0.05, 0.012, 0.008, 0.001):
    before = controller.beta
    rows.append([d, max(min(d / TARGET - 1, 0.2), -0.2), before, controller.update(d, BATCH)])
table(["measured d", "e = clip(d/d_targ − 1, ±0.2)", "β before", "β after (n = 512)"], rows)
late = proportional["kl"][len(proportional["kl"]) // 2:]
median_late = sorted(late)[len(late) // 2]
print(f"\n    In training from β = 0.03: β ends at {proportional['beta'][-1]:.3g} after {UPDATES} updates; the")
print(f"    median KL of the second half is {median_late:.4f}.")
largest_move = max(abs(b2 / b1 - 1) for b1, b2 in zip(proportional["beta"], proportional["beta"][1:]))


def reversals(betas):
    """How often β changes direction (up then down, or down then up)."""
    moves = [b2 - b1 for b1, b2 in zip(betas, betas[1:]) if b2 != b1]
    return sum(m1 * m2 < 0 for m1, m2 in zip(moves, moves[1:]))


lesson.verdict("Each update moves β by at most 20%, in proportion to the relative error, where the adaptive rule "
               "jumps by ×2 or ÷2: β glides instead of zig-zagging, and the KL still settles near d_targ",
               largest_move <= 0.2 + 1e-9 and reversals(proportional["beta"]) < reversals(adaptive["beta"])
               and TARGET / 2 <= median_late <= 2 * TARGET,
               f"largest move of β {largest_move:.0%} ≤ 20%; direction reversals {reversals(proportional['beta'])} "
               f"(proportional) < {reversals(adaptive['beta'])} (adaptive); median late KL {median_late:.4f} "
               "within [d_targ/2, 2·d_targ]")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for beta, trace in fixed_runs.items():
    axes[0].plot(trace["kl"], lw=1, label=f"fixed β = {beta}")
axes[0].plot(adaptive["kl"], "k-", lw=2, label="adaptive β (TR-3)")
axes[0].plot(proportional["kl"], "k--", lw=1.5, label="proportional β (TR-4)")
axes[0].axhspan(TARGET / 1.5, TARGET * 1.5, color="green", alpha=0.15, label="[d_targ/1.5, 1.5·d_targ]")
axes[0].set_yscale("log")
axes[0].set_xlabel("update")
axes[0].set_ylabel("KL[π_old ‖ π_θ] after the update")
axes[0].legend(fontsize=7)
axes[1].step(range(UPDATES), adaptive["beta"], where="post", label="adaptive (×2 or ÷2)")
axes[1].plot(proportional["beta"], label="proportional (smooth)")
axes[1].set_yscale("log")
axes[1].set_xlabel("update")
axes[1].set_ylabel("β")
axes[1].legend(fontsize=8)
fig.suptitle("TR-2/3/4: the KL penalty with fixed, adaptive and proportional β")
lesson.save(fig, "kl_penalty.png")

# %% Step 5 — a β that cannot run away: the collapse of the unbounded doubling rule, and its cure
lesson.step("When the KL grows slowly at first: β halved to nothing, then a KL that runs away",
            "TR-3 halves β below d_targ/1.5 with no floor; TR-4 moves it by ≤ 0.2·n/H, and both stay in "
            "[β₀/bound, β₀·bound]", ids=["TR-3", "TR-4"])

# PPO-RLHF steers the KL to π_ref per reply (target 3 nats) with β from 0.3, held through a
# warm-up of 20 iterations and updated every 3 (llm.config). On a tiny random Llama the unbounded
# doubling rule halved β while the KL was still small, to under 0.001, and the KL then ran from 3
# to 28 nats in 15 iterations while the gold reward fell (llm/README.md). A full PPO run costs
# minutes; this step replays the mechanism on a *simulated* KL instead — a stylised model, not a
# language model — with the very controller objects the pipeline builds (core.kl):
#     d ← max(0.9·d, d + η_t·((k − β)·d + u)),   η_t = min(1, t/55)⁴
# u is the reward's steady push away from π_ref, k·d the push that grows with the distance (the
# reward model's blind spots pay more the further the policy goes), β·d the KL penalty's pull
# back, η_t a model that learns slowly at first; the KL falls by at most 10% per iteration. The
# gold reward rises with the first nats and then pays for every nat past 2.5:
#     gold(d) = −0.06 + 2.3·(1 − e^(−d/1.2)) − 0.16·max(0, d − 2.5)
K_PUSH, U_PUSH, RLHF_TARGET, RLHF_BETA, ITERATIONS = 0.18, 0.3, 3.0, 0.3, 80


def simulated_rlhf(controller):
    """β, KL and gold per iteration of the simulated run; the controller sees 64 replies an iteration."""
    d, trace = 0.0, {"beta": [], "kl": [], "gold": []}
    for t in range(ITERATIONS):
        beta = controller.beta
        eta = min(1.0, (t + 1) / 55) ** 4
        d = max(0.9 * d, d + eta * ((K_PUSH - beta) * d + U_PUSH))
        trace["beta"].append(beta)
        trace["kl"].append(d)
        trace["gold"].append(-0.06 + 2.3 * (1 - math.exp(-d / 1.2)) - 0.16 * max(0.0, d - 2.5))
        controller.update(d, 64)
    return trace


schedules = {
    "TR-3 unbounded (the old default)": make_kl_controller("adaptive", RLHF_BETA, RLHF_TARGET, bound=None,
                                                            warmup=20, every=3),
    "TR-3 in [β₀/10, 10·β₀]": make_kl_controller("adaptive", RLHF_BETA, RLHF_TARGET, bound=10.0, warmup=20, every=3),
    "TR-4 in [β₀/10, 10·β₀] (the default)": make_kl_controller("proportional", RLHF_BETA, RLHF_TARGET, 1000.0,
                                                                bound=10.0, warmup=20, every=3),
}
runs = {name: simulated_rlhf(controller) for name, controller in schedules.items()}
shown = (20, 28, 40, 44, 48, 52, 56, 60, 67, 79)
for name, run in runs.items():
    print(f"\n    {name}")
    table(["iteration", *map(str, shown)],
          [["β", *(f"{run['beta'][t]:.3g}" for t in shown)],
           ["KL (nats)", *(f"{run['kl'][t]:.1f}" for t in shown)],
           ["gold", *(f"{run['gold'][t]:.2f}" for t in shown)]])
old, bounded, default = runs.values()
late = slice(ITERATIONS // 2, None)
old_peak = max(range(ITERATIONS), key=lambda t: old["gold"][t])
print(f"\n    Unbounded, β falls to {min(old['beta']):.2g} while the KL is still below d_targ/1.5; the gold reward")
print(f"    peaks at iteration {old_peak} ({old['gold'][old_peak]:.2f}, KL {old['kl'][old_peak]:.1f}), then the KL "
      f"runs to {max(old['kl']):.0f} nats before")
print("    β, doubling every third iteration from there, catches it. With the bound, β cannot fall below "
      f"{RLHF_BETA / 10:g};")
print("    the proportional rule moves β by at most 0.2·192/1000 ≈ 4% per update: over the slow start it only")
print(f"    lowers it to {min(default['beta']):.3g}, and it raises it again once the KL passes the target.")
lesson.verdict("Unbounded, the doubling rule halves β to under 0.002 during a slow start and the KL then runs past "
               "5× its target while the gold reward falls below the SFT policy's; bounded and proportional, β stays "
               "within [β₀/10, 10·β₀], the KL of the last half stays under 2× its target and the gold reward ends "
               "near its best",
               min(old["beta"]) < 0.002 and max(old["kl"]) > 5 * RLHF_TARGET and min(old["gold"][late]) < -0.06
               and min(default["beta"]) >= RLHF_BETA / 10 and max(default["kl"][late]) < 2 * RLHF_TARGET
               and default["gold"][-1] > 0.9 * max(default["gold"]),
               f"unbounded: min β {min(old['beta']):.2g}, max KL {max(old['kl']):.0f}, lowest late gold "
               f"{min(old['gold'][late]):.2f}; proportional bounded: min β {min(default['beta']):.3g}, max late KL "
               f"{max(default['kl'][late]):.1f} < {2 * RLHF_TARGET:g}, final gold {default['gold'][-1]:.2f} "
               f"(best {max(default['gold']):.2f}); doubling bounded: max KL {max(bounded['kl']):.1f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for name, run in runs.items():
    axes[0].plot(run["beta"], label=name)
    axes[1].plot(run["kl"], label=name)
    axes[2].plot(run["gold"], label=name)
axes[0].set_yscale("log")
axes[0].set_ylabel("β")
axes[1].set_yscale("log")
axes[1].axhspan(RLHF_TARGET / 2, 2 * RLHF_TARGET, color="green", alpha=0.15, label="[d_targ/2, 2·d_targ]")
axes[1].set_ylabel("KL to π_ref (nats per reply)")
axes[2].set_ylabel("gold reward")
for ax in axes:
    ax.set_xlabel("PPO iteration")
axes[1].legend(fontsize=7)
fig.suptitle("A simulated RLHF run (a stylised KL model, not a language model): β schedules with and without bounds")
lesson.save(fig, "beta_bounds.png")

# %%
lesson.done()
