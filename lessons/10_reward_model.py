"""Lesson 10 — The reward model and the KL-regularised optimum.

What it teaches
    A reward model turns pairwise human preferences into one number per reply. Bradley–Terry
    says a person prefers y⁺ to y⁻ with probability σ(R(y⁺) − R(y⁻)), so the loss only sees
    score differences: adding a constant to every score changes nothing, and its offset is never
    learned. Trained on noisy labels, a small model recovers the ranking behind them, up to the
    accuracy ceiling the noise allows, and it is wrong where its data and its form do not reach.
    Given a reward, the RLHF objective E[r] − β KL[π‖π_ref] has a closed-form optimum,
    π* ∝ π_ref exp(r/β): gradient ascent finds it. β → 0 gives the reward's favourite reply,
    β → ∞ gives π_ref back. With β = 0 the gradient is the reward's gradient alone.

Notes followed
    001_883a2028b23f6fee.txt (PPO for LLMs): 奖励模型 (reward model) R_φ(x,y) gives a continuous score
        (连续的分数), not a "good/bad" label; pairs (y⁺, y⁻) of the same prompt and the loss
        L(φ) = −log σ(R_φ(x,y⁺) − R_φ(x,y⁻)); 分数越高 … 越"符合人类偏好" (higher means more
        in line with human preference).
    004_27c6b9375ccb306e.txt (PG to GRPO): "Reward Model是怎么设计的?到底是一个函数还是一个模型?": RM
        trained on choice/reject pairs (choice和reject对) from a pretrained model whose LM-head becomes a
        value-head.
    000_8217fa03f8526d4c.txt (RLHF objective): [Reference model] "做得好不好, 我們要有一個 reference model
        來當評審" and "Model 的輸出愈接近 reference model 就表示學得愈好" (erratum E2);
        [綜合期望值和懲罰值] π* = arg max_π {E[r] − β D_KL[π_θ ‖ π_ref]}; "當 β = 0, 忽略掉懲罰的話,
        對式子 (1) 取梯度, 等效只對 reward function 取梯度" (with β = 0 only the reward's gradient
        remains).

Formula IDs: RM-1, RM-2, RM-4. Check the note: E2 (the reward model judges, π_ref anchors).

Run:  python -m lessons run 10 [--step] [--long]

Deviations from the papers
    One prompt and eight enumerable replies instead of a language model, so every expectation
    is an exact sum. The reward model is linear in two features of a reply (its numbers of
    positive and negative words) plus an offset: the features stand in for the pretrained body,
    the weights for the scalar head of InstructGPT's reward model. The simulated annotator
    labels pairs by Bradley–Terry on a hidden gold reward with temperature 1. Lesson 11 trains
    the reward model of the small language model (`llm.reward_model`) instead.
"""

FORMULAS = ("RM-1", "RM-2", "RM-4")

# %% Setup: eight replies to one prompt, a hidden gold reward, a reference policy
import math

import torch
import torch.nn.functional as F

from core.kl import categorical_kl, kl_regularized_objective, kl_regularized_optimum
from core.preference import bradley_terry_loss
from lessons._common import Lesson, plt, say, table

lesson = Lesson(__doc__)
f64 = torch.float64

PROMPT = "review: the plot was"
REPLIES = [
    " great.",
    " good and fun.",
    " great, fun and lovely.",
    " fine.",
    " good and dull.",
    " dull.",
    " bad, dull and awful.",
    " great, great, great and great.",  # four adjectives, one repeated: breaks the grammar
]
# The reward model's view of a reply (its "body"): (number of positive words, number of negative words).
FEATURES = torch.tensor([[1, 0], [2, 0], [3, 0], [0, 0], [1, 1], [0, 1], [0, 3], [4, 0]], dtype=f64)
# The hidden gold reward: Σ sentiment for a grammatical reply, −2 for the ungrammatical last one.
GOLD = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, -1.0, -3.0, -2.0], dtype=f64)
# π_ref: the SFT policy; it writes grammatical replies and almost never the last one.
PI_REF = torch.tensor([0.16, 0.14, 0.07, 0.16, 0.14, 0.16, 0.08, 0.004], dtype=f64)
PI_REF = PI_REF / PI_REF.sum()
REF_LOGITS = PI_REF.log()
BLIND = len(REPLIES) - 1  # index of the ungrammatical reply
print(f"    prompt {PROMPT!r}, {len(REPLIES)} replies; π_ref(y) and the hidden gold reward:")
table(["y", "reply", "π_ref(y)", "gold r*(y)"],
      [[i, repr(r), float(PI_REF[i]), float(GOLD[i])] for i, r in enumerate(REPLIES)], digits=3)


def annotate(n, g):
    """n labelled pairs: y_a, y_b ∼ π_ref (distinct), the annotator prefers y_a with P = σ(r*(y_a) − r*(y_b))."""
    a = torch.multinomial(PI_REF, n, replacement=True, generator=g)
    b = torch.multinomial(PI_REF, n, replacement=True, generator=g)
    a, b = a[a != b], b[a != b]
    prefers_a = torch.rand(len(a), generator=g, dtype=f64) < torch.sigmoid(GOLD[a] - GOLD[b])
    return torch.where(prefers_a, a, b), torch.where(prefers_a, b, a)  # (chosen, rejected)


# %% Step 1 — RM-1: the Bradley–Terry loss, value and gradient
lesson.step("Bradley–Terry: the loss of the reward model, note 001", ids=["RM-1"])

chosen = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=f64, requires_grad=True)
rejected = torch.tensor([-1.0, 0.0, 1.0, 0.0], dtype=f64, requires_grad=True)
loss = bradley_terry_loss(chosen, rejected)
grad_chosen, grad_rejected = torch.autograd.grad(loss.sum(), (chosen, rejected))
loss, chosen, rejected = loss.detach(), chosen.detach(), rejected.detach()
rows = []
for i in range(4):
    d = float(chosen[i] - rejected[i])
    p = 1 / (1 + math.exp(-d))  # P(y⁺ ≻ y⁻) = σ(d)
    rows.append([float(chosen[i]), float(rejected[i]), p, float(loss[i]), math.log1p(math.exp(-d)),
                 float(grad_chosen[i]), -1 / (1 + math.exp(d))])
table(["R⁺", "R⁻", "σ(R⁺ − R⁻)", "bradley_terry_loss", "log(1 + e^−d) by hand", "∂L/∂R⁺ (autograd)",
       "−σ(−d) by hand"], rows)
say(f"∂L/∂R⁻ = {[round(float(v), 4) for v in grad_rejected]}: always −∂L/∂R⁺. The push is σ(−d), large when",
    "the model ranks the pair the wrong way (row 3), near 0 when it already agrees with the label (row 1).",
    "With equal scores (row 4) P = ½ and the loss is log 2 = 0.6931: the model has no opinion yet.", blank=True)
bt_gap = max(max(abs(r[3] - r[4]), abs(r[5] - r[6])) for r in rows)
mirror = float((grad_rejected + grad_chosen).abs().max())
lesson.verdict("bradley_terry_loss and its gradient equal the hand formulas; ∂L/∂R⁻ = −∂L/∂R⁺; the push is largest "
               "on the wrongly ranked row 3 and smallest on row 1; equal scores give log 2",
               bt_gap < 1e-12 and mirror < 1e-12 and abs(rows[3][3] - math.log(2)) < 1e-12
               and abs(rows[2][5]) == max(abs(r[5]) for r in rows) and abs(rows[0][5]) == min(abs(r[5]) for r in rows),
               f"largest gap to the hand formulas {bt_gap:.0e}, |∂L/∂R⁻ + ∂L/∂R⁺| ≤ {mirror:.0e}; |push| row 3 "
               f"{abs(rows[2][5]):.3f}, row 1 {abs(rows[0][5]):.3f}; row 4 loss {rows[3][3]:.4f}")

# %% Step 2 — RM-1: only differences count (shift invariance)
lesson.step("Shift invariance: the loss sees only R⁺ − R⁻",
            "L(R + c) = −log σ((R⁺ + c) − (R⁻ + c)) = L(R)   for any constant c",
            ids=["RM-1"])
rows = []
for c in (0, -10, 3, 1000):
    rows.append([c, float(bradley_terry_loss(chosen + c, rejected + c).mean())])
rows.append(["scale ×2 (not a shift)", float(bradley_terry_loss(2 * chosen, 2 * rejected).mean())])
table(["c added to every score", "mean loss over the 4 pairs"], rows, digits=6)
# The reward model of this lesson: R_φ(y) = w · features(y) + b. How much does b learn?
w = torch.tensor([0.3, -0.2], dtype=f64, requires_grad=True)
b = torch.tensor(0.5, dtype=f64, requires_grad=True)
ch, rj = annotate(200, lesson.generator(1))
scores = FEATURES @ w + b
(grad_w, grad_b) = torch.autograd.grad(bradley_terry_loss(scores[ch], scores[rj]).mean(), (w, b))
say(f"For R_φ(y) = w·f(y) + b on 200 labelled pairs: ∂L/∂w = {[round(float(v), 4) for v in grad_w]},",
    f"∂L/∂b = {float(grad_b):.1e}. The offset b gets no gradient at all: whatever it starts at, it stays.",
    "A reward model's zero is arbitrary (RLHF code often normalises scores for that reason); its scale is",
    "not: doubling every score changes the loss, and the labels' noise decides which scale fits.", blank=True)
shifted = [r[1] for r in rows[:4]]
lesson.verdict("Adding a constant to every score leaves the loss unchanged and b gets no gradient; scaling changes it",
               max(shifted) - min(shifted) < 1e-9 and abs(float(grad_b)) < 1e-12
               and abs(rows[4][1] - shifted[0]) > 1e-3,
               f"spread of the loss over the shifts {max(shifted) - min(shifted):.0e}; ∂L/∂b = {float(grad_b):.0e}; "
               f"×2 moves the loss by {abs(rows[4][1] - shifted[0]):.4f}")

# %% Step 3 — RM-1: learning R_φ from noisy labels; accuracy and its ceiling
lesson.step("Training R_φ on choice/reject pairs (choice和reject对), note 004",
            "min_φ  mean over pairs of −log σ(R_φ(y⁺) − R_φ(y⁻)),   R_φ(y) = w_pos·n_pos(y) + w_neg·n_neg(y) + b",
            ids=["RM-1"])


def train_reward_model(n_pairs, g, steps=300):
    chosen, rejected = annotate(n_pairs, g)
    w = torch.zeros(2, dtype=f64, requires_grad=True)
    b = torch.tensor(0.5, dtype=f64, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        scores = FEATURES @ w + b
        loss = bradley_terry_loss(scores[chosen], scores[rejected]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return w.detach(), float(b.detach()), float(loss.detach()), len(chosen)


test_chosen, test_rejected = annotate(50_000, lesson.generator(99))  # held-out pairs, the same annotator
gold_gap = GOLD[test_chosen] - GOLD[test_rejected]
ceiling = float(torch.sigmoid(gold_gap.abs()).mean())  # the best any model can do on these noisy labels
differs = gold_gap != 0
rows, models = [], {}
sizes = (30, 300, 3000, 30_000) if lesson.long else (30, 300, 3000)
for n in sizes:
    w_fit, b_fit, train_loss, kept = train_reward_model(n, lesson.generator(10 + n))
    scores = FEATURES @ w_fit + b_fit
    margin = scores[test_chosen] - scores[test_rejected]
    label_acc = float((margin > 0).to(f64).mean())
    agreement = float((margin.sign() == gold_gap.sign())[differs].to(f64).mean())
    models[n] = scores
    wrong = (margin.sign() != gold_gap.sign()) & differs
    with_blind = float(((test_chosen == BLIND) | (test_rejected == BLIND))[wrong].to(f64).mean())
    rows.append([kept, float(w_fit[0]), float(w_fit[1]), b_fit, train_loss, label_acc, agreement])
table(["pairs (y_a ≠ y_b)", "w_pos", "w_neg", "b", "train loss", "held-out label acc.", "gold-ranking agreement"],
      rows, digits=3)
N_RM = sizes[-1]
R_phi = models[N_RM]
say(f"Ceiling of label accuracy on the held-out pairs: E[σ(|r*(y_a) − r*(y_b)|)] = {ceiling:.3f}. The",
    "labels are noisy (a person sometimes prefers the worse reply), so no model scores 100% against them.",
    f"Measured against the gold ranking instead, the learned ranking is right on {agreement:.1%} of the",
    "pairs, and", "every pair it gets wrong contains" if with_blind == 1 else
    f"{with_blind:.0%} of the pairs it gets wrong contain", "the last reply (below). A few dozen pairs",
    "already give the ranking; the scale (w near ±1, set by the annotator's noise) needs more. b stays at",
    "0.5 (step 2).", blank=True)
lesson.verdict("No model beats the ceiling of label accuracy; a few dozen pairs already give the ranking (within 5 "
               "points of the largest set's agreement with gold); b stays at 0.5",
               max(r[5] for r in rows) <= ceiling + 0.01 and rows[0][6] >= rows[-1][6] - 0.05
               and max(abs(r[3] - 0.5) for r in rows) < 1e-6,
               f"label accuracy ≤ {max(r[5] for r in rows):.3f} vs ceiling {ceiling:.3f}; agreement {rows[0][6]:.3f} "
               f"({rows[0][0]} pairs) vs {rows[-1][6]:.3f}; largest |b − 0.5| {max(abs(r[3] - 0.5) for r in rows):.0e} "
               "< 1e-6 (Adam's rounding)")
print()
table(["y", "reply", "R_φ(y)", "gold r*(y)"],
      [[i, repr(r), float(R_phi[i]), float(GOLD[i])] for i, r in enumerate(REPLIES)], digits=3)
say(f"R_φ is wrong on one reply: {REPLIES[BLIND]!r} has the most positive words, so the linear model",
    f"rates it highest ({float(R_phi[BLIND]):.2f}), while the gold reward calls it ungrammatical",
    f"({float(GOLD[BLIND]):.0f}). π_ref writes it {float(PI_REF[BLIND]):.1%} of the time, so the pairs hardly show it",
    "(where they do, it loses, which is why w_pos settles below 1), and a counter of sentiment words cannot",
    "represent grammar anyway.", blank=True)
lesson.verdict(f"R_φ is wrong on one reply: {REPLIES[BLIND]!r} is R_φ's highest while the gold reward calls it "
               "ungrammatical (negative, below the median reply)",
               int(R_phi.argmax()) == BLIND and float(GOLD[BLIND]) < min(0.0, float(GOLD.median())),
               f"R_φ = {float(R_phi[BLIND]):.2f} (its maximum), gold {float(GOLD[BLIND]):.0f} < median "
               f"{float(GOLD.median()):.2f}")

fig, ax = plt.subplots(figsize=(6, 4.2))
ax.scatter(GOLD, R_phi, s=40)
for i, reply in enumerate(REPLIES):
    ax.annotate(reply.strip(), (float(GOLD[i]), float(R_phi[i])), fontsize=7, xytext=(4, -3),
                textcoords="offset points", color="C3" if i == BLIND else "k")
ax.plot([-3, 3], [-3 + 0.5, 3 + 0.5], ":", color="gray", label="R = r* + b (b = 0.5)")
ax.set_xlabel("gold reward r*(y)")
ax.set_ylabel("learned R_φ(y)")
ax.set_title(f"RM-1: a Bradley–Terry reward model from {N_RM} noisy pairs")
ax.legend(fontsize=8, loc="lower right")
lesson.save(fig, "reward_model.png")

# %% Step 4 — RM-2: the KL-regularised optimum, by gradient ascent and in closed form
BETA = 0.5
lesson.step("The optimum of E[r] − β·KL (綜合期望值和懲罰值), notes 000 and 001", ids=["RM-2"])
closed = kl_regularized_optimum(REF_LOGITS, R_phi, BETA)  # log π*
rows, runs = [], {}
for start_name, start in (("π_ref", REF_LOGITS), ("uniform", torch.zeros(len(REPLIES), dtype=f64))):
    theta = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=0.1)
    trace = []
    for _ in range(4000 if lesson.long else 1500):
        objective = kl_regularized_objective(theta, REF_LOGITS, R_phi, BETA)
        trace.append(float(objective.detach()))
        optimizer.zero_grad()
        (-objective).backward()  # ascent
        optimizer.step()
    runs[start_name] = (F.softmax(theta.detach(), -1), trace)
table(["y", "reply", "π_ref", "R_φ", "π* closed form", "ascent from π_ref", "ascent from uniform"],
      [[i, repr(REPLIES[i]), float(PI_REF[i]), float(R_phi[i]), float(closed[i].exp()),
        float(runs["π_ref"][0][i]), float(runs["uniform"][0][i])] for i in range(len(REPLIES))], digits=4)
value_closed = float(kl_regularized_objective(closed, REF_LOGITS, R_phi, BETA))
beta_log_z = BETA * float(torch.logsumexp(REF_LOGITS + R_phi / BETA, 0))
gap = max(float((p - closed.exp()).abs().max()) for p, _ in runs.values())
say(f"β = {BETA}. Largest |π_ascent − π*| over both starts: {gap:.1e} (the last digits of the least likely",
    f"reply are the slowest to settle). Objective at π*: {value_closed:.6f}; β·log Z = β·log Σ_y π_ref(y)",
    f"e^(R_φ(y)/β) = {beta_log_z:.6f}: the optimum's value, as RM-2 says. Objective after ascent:",
    f"{runs['π_ref'][1][-1]:.6f} and {runs['uniform'][1][-1]:.6f}.", blank=True)
lesson.verdict("Gradient ascent from either start reaches the closed form π*, whose value is β·log Z; no policy the "
               "ascent visited does better",
               gap < 1e-3 and abs(value_closed - beta_log_z) < 1e-9
               and max(max(trace) for _, trace in runs.values()) <= value_closed + 1e-9,
               f"|π_ascent − π*| ≤ {gap:.1e} < 1e-3; |value − β·log Z| = {abs(value_closed - beta_log_z):.0e}; best "
               f"ascent value {max(max(trace) for _, trace in runs.values()):.6f} ≤ {value_closed:.6f}")

# %% Step 5 — RM-2: the limits β → 0 and β → ∞
lesson.step("β sets how far the policy moves: β → 0 and β → ∞",
            "π*(y) = π_ref(y) e^(r(y)/β) / Z",
            "β → 0 ⇒ all the mass on argmax_y r(y);   β → ∞ ⇒ π* → π_ref",
            ids=["RM-2"])
betas = [0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0]
sweep = []
for beta in betas:
    log_pi = kl_regularized_optimum(REF_LOGITS, R_phi, beta)
    pi = log_pi.exp()
    sweep.append(dict(beta=beta, pi=pi, proxy=float((pi * R_phi).sum()), gold=float((pi * GOLD).sum()),
                      kl=float(categorical_kl(log_pi, REF_LOGITS)), tv=0.5 * float((pi - PI_REF).abs().sum())))
table(["β", "π*(best grammatical)", f"π*({REPLIES[BLIND].strip()[:12]}…)", "E_π*[R_φ]", "E_π*[gold]",
       "KL[π*‖π_ref]", "TV(π*, π_ref)"],
      [[s["beta"], float(s["pi"][2]), float(s["pi"][BLIND]), s["proxy"], s["gold"], s["kl"], s["tv"]] for s in sweep],
      digits=3)
ref_gold, ref_proxy = float((PI_REF * GOLD).sum()), float((PI_REF * R_phi).sum())
best = max(sweep, key=lambda s: s["gold"])
say(f"π_ref itself: E[R_φ] = {ref_proxy:.3f}, E[gold] = {ref_gold:.3f}, KL = 0. As β falls, π* leaves π_ref and",
    "E[R_φ] climbs all the way; β → 0 puts all the mass on R_φ's favourite, the ungrammatical reply, and",
    f"the gold reward drops to {sweep[0]['gold']:.2f}. As β grows, π* returns to π_ref (KL → 0). The gold reward",
    f"peaks in between (β = {best['beta']}: {best['gold']:.2f}): with an imperfect reward model, the KL term is what",
    "keeps the policy where R_φ is right.", blank=True)
proxies = [s_["proxy"] for s_ in sweep]
peak = [s_["beta"] for s_ in sweep].index(best["beta"])
lesson.verdict("As β falls E[R_φ] climbs all the way and β → 0 puts the mass on R_φ's favourite, where the gold reward "
               "drops; as β grows π* returns to π_ref; the gold reward peaks in between",
               all(a > b for a, b in zip(proxies, proxies[1:])) and float(sweep[0]["pi"][BLIND]) > 0.9
               and sweep[0]["gold"] < ref_gold and sweep[-1]["kl"] < 0.01 and 0 < peak < len(sweep) - 1,
               f"E[R_φ] {proxies[0]:.2f} → {proxies[-1]:.2f}, falling with β; π*(blind spot) at β = {betas[0]} "
               f"{float(sweep[0]['pi'][BLIND]):.3f}, gold {sweep[0]['gold']:.2f} < π_ref's {ref_gold:.2f}; KL at "
               f"β = {betas[-1]} {sweep[-1]['kl']:.4f}; gold peaks at β = {best['beta']}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
fine = torch.logspace(-1.7, 2, 120).tolist()
stack = torch.stack([kl_regularized_optimum(REF_LOGITS, R_phi, b).exp() for b in fine], 1)  # (Y, n)
axes[0].stackplot(fine, stack.numpy(), labels=[r.strip() for r in REPLIES])
axes[0].set_xscale("log")
axes[0].set_xlabel("β")
axes[0].set_ylabel("π*(y)")
axes[0].set_title("π* ∝ π_ref·exp(R_φ/β)")
axes[0].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
frontier = [(float(categorical_kl(kl_regularized_optimum(REF_LOGITS, R_phi, b), REF_LOGITS)),
             float((kl_regularized_optimum(REF_LOGITS, R_phi, b).exp() * R_phi).sum()),
             float((kl_regularized_optimum(REF_LOGITS, R_phi, b).exp() * GOLD).sum())) for b in fine]
axes[1].plot([f[0] for f in frontier], [f[1] for f in frontier], label="E[R_φ] (what is optimised)")
axes[1].plot([f[0] for f in frontier], [f[2] for f in frontier], label="E[gold] (what we want)")
for s in sweep:
    if s["beta"] in (0.1, 0.3, 1.0, 5.0):
        axes[1].annotate(f"β={s['beta']}", (s["kl"], s["gold"]), fontsize=7)
axes[1].set_xlabel("KL[π* ‖ π_ref] (nats)")
axes[1].set_ylabel("expected reward")
axes[1].set_title("Reward against distance from π_ref")
axes[1].legend(fontsize=8)
fig.suptitle("RM-2: the KL-regularised optimum and its β limits")
lesson.save(fig, "kl_optimum.png")

# %% Step 6 — check the note: who judges?
lesson.step("Check the note: does closer to π_ref mean better? ([Reference model], note 000)",
            "the judge: R_φ (or the gold reward behind it);   the anchor: β·KL[π‖π_ref]")
flat = kl_regularized_optimum(REF_LOGITS, torch.full_like(R_phi, 1.7), 0.05).exp()
one = next(s for s in sweep if s["beta"] == 1.0)
lesson.check_note(
    "E2",
    evidence=[
        f"π_ref is as close to π_ref as a policy gets (KL = 0), and its gold reward is {ref_gold:.3f}. π* at β = 1 is "
        f"{one['kl']:.3f} nats away and scores {one['gold']:.3f}: further from the reference, better.",
        f"With a reward that is equal for every reply, π* = π_ref for any β (max |π* − π_ref| = "
        f"{float((flat - PI_REF).abs().max()):.1e} at β = 0.05): π_ref is what is left when the judge has no "
        "opinion; it never ranks replies itself.",
        f"Let the judge speak alone (β → 0) and the policy goes wherever R_φ points, here to its blind spot "
        f"(gold {sweep[0]['gold']:.2f}); a moderate β holds it near π_ref, where R_φ was trained.",
    ],
    conclusion="The reward model is the judge (評審, the role note 000 gives π_ref): it says which replies are "
               "better. π_ref only anchors: the KL term keeps the policy close to it so that it keeps what it knew "
               "(災難性遺忘) and stays where the reward model can be trusted. Closeness to π_ref is a constraint "
               "paid for with β, not the goal.",
    holds=(one["kl"] > 0 and one["gold"] > ref_gold and float((flat - PI_REF).abs().max()) < 1e-10
           and sweep[0]["gold"] < best["gold"]),
    measured=f"β = 1: KL {one['kl']:.3f} > 0 and gold {one['gold']:.3f} > π_ref's {ref_gold:.3f}; flat reward: "
             f"π* = π_ref within {float((flat - PI_REF).abs().max()):.0e}; β → 0: gold {sweep[0]['gold']:.2f} < the "
             f"peak {best['gold']:.2f}",
)

# %% Step 7 — RM-4: with β = 0 the gradient is the reward's gradient
lesson.step("β = 0: only the reward's gradient remains (note 000)", ids=["RM-4"])
theta = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.0, -0.4, 0.2, 1.0], dtype=f64, requires_grad=True)
other_ref = torch.randn(len(REPLIES), generator=lesson.generator(7), dtype=f64)  # another reference policy
(g_zero,) = torch.autograd.grad(kl_regularized_objective(theta, REF_LOGITS, R_phi, 0.0), theta)
(g_zero_other,) = torch.autograd.grad(kl_regularized_objective(theta, other_ref, R_phi, 0.0), theta)
(g_reward,) = torch.autograd.grad((F.softmax(theta, -1) * R_phi).sum(), theta)  # ∇ E_π[R_φ], nothing else
(g_half,) = torch.autograd.grad(kl_regularized_objective(theta, REF_LOGITS, R_phi, BETA), theta)
(g_kl,) = torch.autograd.grad(categorical_kl(theta, REF_LOGITS), theta)
table(["θ_y", "∇(E[R] − 0·KL)", "same, other π_ref", "∇E[R] alone", f"∇(E[R] − {BETA}·KL)", "∇E[R] − β∇KL"],
      [[i, float(g_zero[i]), float(g_zero_other[i]), float(g_reward[i]), float(g_half[i]),
        float(g_reward[i] - BETA * g_kl[i])] for i in range(len(REPLIES))], digits=5)
say(f"β = 0: max |∇objective − ∇E[R]| = {float((g_zero - g_reward).abs().max()):.1e}, and the reference policy",
    "does not enter the gradient at all (the columns '∇(E[R] − 0·KL)' and 'same, other π_ref' agree). The",
    "policy gradient of lesson 1 is",
    "the whole story then, and the reference model need not even be loaded (DR-2, lesson 13).",
    f"With β = {BETA} the gradient gains −β∇KL, a pull back toward π_ref (max difference to the last column",
    f"{float((g_half - (g_reward - BETA * g_kl)).abs().max()):.1e}).", blank=True)
gradient_gaps = (float((g_zero - g_reward).abs().max()), float((g_zero - g_zero_other).abs().max()),
                 float((g_half - (g_reward - BETA * g_kl)).abs().max()))
lesson.verdict("With β = 0 the gradient is ∇E[R] and π_ref does not enter it; with β > 0 it gains −β∇KL",
               max(gradient_gaps) < 1e-12, "gaps " + ", ".join(f"{v:.0e}" for v in gradient_gaps) + " < 1e-12")

# %%
lesson.done()
