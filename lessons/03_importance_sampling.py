"""Lesson 3 — Importance sampling and the ratio ρ = π_θ/π_old.

What it teaches
    Samples drawn from the old policy can score a new policy if each one is re-weighted by the
    ratio ρ = π_θ/π_old. At θ = θ_old the gradient of E[ρA] is exactly the policy gradient,
    which is why PPO can take several gradient steps on one batch; the further π_θ moves from
    π_old, the noisier the re-weighted estimate, which is why it must not move far. For a
    language model the ratio of a whole reply is the product of its token ratios.

Notes followed
    003_0b6419f90971e6ff.txt (PPO derived): "重要性采样" (importance sampling): 固定分母，优化分子 (fix
        the denominator, optimise the numerator), the objective ∫ π_new/π_old · Q(s_t, a).
    002_c297ee72da052b00.txt (PPO paper notes): "TRPO": max E[π_θ/π_θold · A_t]; "PPO for LLM
        post-training": the whole answer as one action (把一整个答案看作一个 action) and its new/old ratio
        (计算整段话的 new/old model prob ratio); sparse vs dense reward.

Formula IDs: IS-1, IS-2. Check the note: E5 (Q(s_t|a) should read Q(s_t, a)).

Run:  python -m lessons run 3 [--step] [--long]

Deviations from the papers
    A single-state categorical policy for the ratio experiments and a bigram table as the
    "language model" (a token depends only on the previous one). Core has no function of its
    own for a reply's log-probability; it is the masked sum of token log-probs
    (`core.masked.masked_sum`), checked here against a plain loop.
"""

FORMULAS = ("IS-1", "IS-2")

# %% Setup
import math

import torch
import torch.nn.functional as F

from core.kl import categorical_kl
from core.losses import ratio_surrogate
from core.masked import masked_sum
from core.surrogates import score_function_surrogate
from lessons._common import Lesson, plt, table

lesson = Lesson(__doc__)
f64 = torch.float64

# One state, five actions, a fixed advantage per action.
advantage = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.8], dtype=f64)
theta_old = torch.tensor([0.2, 0.1, -0.3, 0.4, 0.0], dtype=f64)
direction = torch.tensor([0.5, -0.4, 0.3, -0.9, 0.6], dtype=f64)  # where the update moves the logits

# %% Step 1 — importance sampling: old samples, new expectation
lesson.step(
    "Importance sampling (重要性采样): score π_θ with samples of π_old",
    "E_{a∼π_θ}[A(a)] = Σ_a π_old(a) · (π_θ(a)/π_old(a)) · A(a) = E_{a∼π_old}[ρ(a) A(a)]",
    "Var of the estimate grows with E_{π_old}[ρ²]: effective sample size ≈ N / E_{π_old}[ρ²]",
)

g = lesson.generator(1)
n = 10_000 if lesson.long else 1_000
old_probs = F.softmax(theta_old, -1)
old_logp = F.log_softmax(theta_old, -1)
samples = torch.multinomial(old_probs, n, replacement=True, generator=g)  # a ∼ π_old, drawn once
rows, kls, spreads = [], [], []
for step_size in (0.0, 1.0, 2.0, 4.0, 6.0, 8.0):
    theta_new = theta_old + step_size * direction
    exact = float((F.softmax(theta_new, -1) * advantage).sum())  # E_{π_θ}[A], enumerated
    weighted = ratio_surrogate(F.log_softmax(theta_new, -1)[samples], old_logp[samples], advantage[samples])  # ρA
    estimate, stderr = float(weighted.mean()), float(weighted.std()) / math.sqrt(n)
    ratio = (F.softmax(theta_new, -1) / old_probs)
    second_moment = float((old_probs * ratio**2).sum())  # E_old[ρ²]
    kl = float(categorical_kl(theta_old, theta_new))  # KL[π_old ‖ π_θ]
    kls.append(kl)
    spreads.append(stderr * math.sqrt(n))
    rows.append([step_size, kl, exact, estimate, stderr, float(ratio.max()), round(n / second_moment)])
table(["step", "KL[π_old‖π_θ]", "E_θ[A] exact", "mean of ρA", "± std err", "max ρ", "effective N"], rows)
print()
worst_z = max(abs(row[3] - row[2]) / row[4] for row in rows)
lesson.verdict(f"The same {n} samples of π_old estimate E_θ[A] for every θ without bias", worst_z < 3,
               f"largest |mean of ρA − exact| / std err over the rows = {worst_z:.2f} < 3")
effective = [row[6] for row in rows]
lesson.verdict("The further π_θ moves, the more a few samples with large ρ dominate: the effective sample size "
               "shrinks at every step, and the estimate gets noisier (by a third or more at the largest step)",
               all(a > b for a, b in zip(effective, effective[1:])) and spreads[-1] > 1.3 * spreads[0],
               f"effective N {' > '.join(map(str, effective))}; std per sample "
               f"{', '.join(f'{v:.2f}' for v in spreads)}, the last > 1.3 × the first")
print("    (The rows share their samples, so their errors move together.)")

fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot(kls, spreads, "o-")
ax.set_xlabel("KL[π_old ‖ π_θ]")
ax.set_ylabel("std of ρ·A per sample")
ax.set_title("Importance weights get noisy as π_θ leaves π_old")
lesson.save(fig, "ratio_variance.png")

# %% Step 2 — IS-1: at θ = θ_old the ratio surrogate has the policy gradient
lesson.step("The ratio surrogate and the policy gradient, notes 002 and 003", ids=["IS-1"])

theta = theta_old.clone().requires_grad_(True)
logp = F.log_softmax(theta, -1)
# The same samples, two surrogates: ρ·A (IS-1) and log π·A (PG-4).
(grad_ratio,) = torch.autograd.grad(ratio_surrogate(logp[samples], old_logp[samples], advantage[samples]).mean(),
                                    theta, retain_graph=True)
(grad_score,) = torch.autograd.grad(score_function_surrogate(logp[samples], advantage[samples]).mean(), theta)
(grad_exact,) = torch.autograd.grad((F.softmax(theta, -1) * advantage).sum(), theta)
table(["∇ at θ_old of", *[f"θ{i}" for i in range(5)]],
      [["mean ρA over the samples", *grad_ratio.tolist()],
       ["mean log π·A over the samples", *grad_score.tolist()],
       ["Σ_a π_θ(a) A(a), exact", *grad_exact.tolist()]])
difference = float((grad_ratio - grad_score).abs().max())
print(f"\n    ratio vs score surrogate on the same samples: max difference {difference:.1e}")
lesson.verdict("At θ = θ_old, ρ = 1 and ∇ρ = ρ ∇log π = ∇log π: the two surrogates agree sample by sample",
               difference < 1e-12, f"max difference {difference:.1e} < 1e-12")
print("    After a step they differ: ρA keeps re-weighting the old samples for the new policy, which is")
print("    what lets PPO take several gradient steps on one batch (固定分母，优化分子).")

# %% Step 3 — check the note: Q(s_t|a) or Q(s_t, a)?
lesson.step(
    "The note's surrogate, note 003",
    "note 003 writes   π_new(a|s_t)/π_old(a|s_t) · Q(s_t|a)",
    "it means          π_new(a|s_t)/π_old(a|s_t) · Q(s_t, a)     (Q takes a state and an action)",
)

# A 2-state, 2-action problem with exact Q (γ = 0.8), to look at Q as a table.
gamma = 0.8
P = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]], dtype=f64)  # P[s, a, s']
R = torch.tensor([[-1.0, 0.5], [-2.0, -0.5]], dtype=f64)  # a hard game: most rewards are negative
pi = torch.tensor([[0.5, 0.5], [0.6, 0.4]], dtype=f64)
V = torch.linalg.solve(torch.eye(2, dtype=f64) - gamma * torch.einsum("sa,sat->st", pi, P), (pi * R).sum(-1))
Q = R + gamma * torch.einsum("sat,t->sa", P, V)
table(["", "a = 0", "a = 1", "Σ_a π(a|s) Q(s,a) = V(s)"],
      [[f"Q(s={s}, ·)", Q[s, 0], Q[s, 1], (pi[s] * Q[s]).sum()] for s in range(2)] +
      [["Σ_s Q(s, a)", Q[:, 0].sum(), Q[:, 1].sum(), ""]])
# At θ = θ_old the note's objective is Σ_a π_old(a|s) · ρ · Q(s, a) with ρ = 1: the value V(s).
objective = [float((pi[s] * ratio_surrogate(pi[s].log(), pi[s].log(), Q[s])).sum()) for s in range(2)]
not_a_distribution = bool((Q < 0).any()) or float((Q.sum(0) - 1).abs().max()) > 1e-6
objective_gap = max(abs(o - float(v)) for o, v in zip(objective, V))

lesson.check_note(
    "E5",
    evidence=[
        f"Q is a table over (state, action) pairs: Q(0,·) = {[round(v, 3) for v in Q[0].tolist()]}, "
        f"Q(1,·) = {[round(v, 3) for v in Q[1].tolist()]}.",
        f"Read as a distribution over s given a, Q(s|a) would be ≥ 0 and sum to 1 over s; here the sums over s "
        f"are {Q[:, 0].sum():.3f} and {Q[:, 1].sum():.3f}, and every entry is negative.",
        f"Σ_a π_old(a|s)·ρ·Q(s, a) at θ = θ_old gives V(s) = {[round(v, 3) for v in objective]}, the value the "
        "note maximises: the product weights the pair (s_t, a) that was sampled.",
    ],
    conclusion="Q(s_t, a), the expected return after taking action a in state s_t; the note's own definition "
               "A(s_t, a) = Q(s_t, a) − V(s_t) a few lines later uses this form.",
    holds=not_a_distribution and objective_gap < 1e-12,
    measured=f"Q has {int((Q < 0).sum())} negative entries, column sums {Q[:, 0].sum():.3f}, {Q[:, 1].sum():.3f} "
             f"(not a distribution over s); Σ_a π ρ Q = V(s) within {objective_gap:.0e}",
)
print()
best_advantage = (Q - V[:, None]).gather(1, Q.argmax(1, keepdim=True))
lesson.verdict("The table also shows the note's 摆烂 worry: in both states every Q is negative, so weighting by Q "
               "pushes every action down; the advantage Q − V is positive for the better action (lesson 2)",
               bool((Q < 0).all()) and bool((best_advantage > 0).all()),
               f"max Q = {float(Q.max()):.3f} < 0; A of the better action = "
               f"{[round(v, 3) for v in best_advantage.flatten().tolist()]} > 0")

# %% Step 4 — IS-2: a reply's log-probability is the sum of its tokens' log-probs
lesson.step("A whole reply as one action (把一整个答案看作一个 action), note 002", ids=["IS-2"])

# A bigram "language model" over the vocabulary {0: EOS, 1, 2, 3}: the next token depends on the
# previous one (row 4 is the start of the reply). Old and new policy differ a little.
VOCAB, EOS, MAX_LEN = 4, 0, 5
gen = lesson.generator(4)
old_table = torch.randn(VOCAB + 1, VOCAB, generator=gen, dtype=f64)  # (previous token or start, next token)
new_table = old_table + 0.3 * torch.randn(VOCAB + 1, VOCAB, generator=gen, dtype=f64)
START = VOCAB


def sample_replies(logit_table, batch, g):
    """Right-padded replies (B, T) and their mask; a reply ends at EOS or after MAX_LEN tokens."""
    tokens = torch.zeros(batch, MAX_LEN, dtype=torch.long)
    mask = torch.zeros(batch, MAX_LEN, dtype=f64)
    previous = torch.full((batch,), START)
    alive = torch.ones(batch, dtype=torch.bool)
    for t in range(MAX_LEN):
        nxt = torch.multinomial(F.softmax(logit_table[previous], -1), 1, generator=g).squeeze(1)
        tokens[:, t] = torch.where(alive, nxt, EOS)
        mask[:, t] = alive.to(f64)
        alive = alive & (nxt != EOS)
        previous = nxt
    return tokens, mask


def token_logprobs(logit_table, tokens):
    """log π(y_t | y_<t) at every position: (B, T). Padding positions hold a number; the mask drops it."""
    previous = torch.cat([torch.full((tokens.shape[0], 1), START), tokens[:, :-1]], dim=1)
    return F.log_softmax(logit_table[previous], -1).gather(2, tokens[..., None]).squeeze(-1)


tokens, mask = sample_replies(old_table, 6, gen)
old_tok, new_tok = token_logprobs(old_table, tokens), token_logprobs(new_table, tokens)  # (B, T) each
old_seq = masked_sum(old_tok, mask, dim=-1)  # log π_old(y|x) = Σ_t log π_old(y_t|x, y_<t)
new_seq = masked_sum(new_tok, mask, dim=-1)
seq_ratio = ratio_surrogate(new_seq, old_seq, torch.ones_like(new_seq))  # exp(Σ_t token log-ratios)

rows = []
for i in range(len(tokens)):
    length = int(mask[i].sum())
    # The plain loop: multiply the probabilities token by token.
    p_old, p_new, prev = 1.0, 1.0, START
    for t in range(length):
        y = int(tokens[i, t])
        p_old *= float(F.softmax(old_table[prev], -1)[y])
        p_new *= float(F.softmax(new_table[prev], -1)[y])
        prev = y
    token_ratios = (new_tok[i, :length] - old_tok[i, :length]).exp()
    reply = " ".join("eos" if v == EOS else str(int(v)) for v in tokens[i, :length])
    rows.append([reply, length, float(old_seq[i]), math.log(p_old), float(seq_ratio[i]), p_new / p_old,
                 float(token_ratios.min()), float(token_ratios.max())])
table(["reply", "len", "Σ_t log π_old", "log Π_t π_old", "ρ = exp(Σ log-ratio)", "Π π_new/Π π_old",
       "min ρ_t", "max ρ_t"], rows)

# The sum of token log-probs defines a distribution over whole replies: the probabilities of
# every possible reply (all lengths, EOS-terminated or cut at MAX_LEN) add up to 1.
next_token_logp = F.log_softmax(old_table, -1).tolist()  # [previous][next]
total, count = 0.0, 0
frontier = [((), 0.0)]  # (reply so far, its log-prob)
while frontier:
    reply, logp_reply = frontier.pop()
    prev = reply[-1] if reply else START
    for y in range(VOCAB):
        logp_next = logp_reply + next_token_logp[prev][y]
        if y == EOS or len(reply) + 1 == MAX_LEN:
            total += math.exp(logp_next)
            count += 1
        else:
            frontier.append((reply + (y,), logp_next))
print(f"\n    Σ over all {count} possible replies of exp(Σ_t log π_old(y_t|y_<t)) = {total:.12f}")
product_gap = max(max(abs(row[2] - row[3]), abs(row[4] - row[5]) / row[5]) for row in rows)
lesson.verdict("A reply's log-probability is the sum of its tokens' (its ratio the product of theirs), and these "
               "probabilities of whole replies sum to 1: a reply can be treated as one action with probability "
               "Π_t π(y_t|y_<t) (sparse reward: one reward for the whole reply)",
               product_gap < 1e-10 and abs(total - 1) < 1e-10,
               f"largest gap sum vs product {product_gap:.0e} < 1e-10; |Σ − 1| = {abs(total - 1):.0e} < 1e-10")

# %% Step 5 — why RLHF keeps ratios per token: the sequence ratio drifts with length
lesson.step("Sequence ratio vs length",
            "ρ(y) = Π_t ρ_t = exp(Σ_t log ρ_t):  small per-token changes multiply")
g = lesson.generator(5)
rows = []
lengths = (1, 10, 100, 1000)
n_replies = 5_000
for length in lengths:
    # per-token log-ratios of a policy that moved a little: mean 0, spread 0.05
    log_ratios = 0.05 * torch.randn(n_replies, length, generator=g)  # (replies, tokens)
    token_outside = float(((log_ratios.exp() < 0.8) | (log_ratios.exp() > 1.2)).float().mean())
    seq = ratio_surrogate(log_ratios.sum(-1), torch.zeros(n_replies), torch.ones(n_replies))
    outside = float(((seq < 0.8) | (seq > 1.2)).float().mean())
    rows.append([length, token_outside, float(seq.quantile(0.05)), float(seq.quantile(0.95)), outside])
table(["reply length", "tokens outside [0.8, 1.2]", "5% of ρ(y)", "95% of ρ(y)", "replies outside [0.8, 1.2]"], rows)
print()
token_share = max(row[1] for row in rows)
reply_share = [row[4] for row in rows]
lesson.verdict("Each token ratio stays near 1, but the reply's ratio spreads out as replies get longer: a clip "
               "range of ±0.2 on whole replies would clip most long replies",
               token_share < 0.01 and all(a < b for a, b in zip(reply_share, reply_share[1:]))
               and reply_share[-1] > 0.8,
               f"tokens outside [0.8, 1.2]: at most {token_share:.4f} < 0.01; replies outside: "
               f"{' < '.join(f'{v:.3f}' for v in reply_share)}, the longest > 0.8")
print("    PPO for RLHF therefore computes and clips the ratio per token, while the reward may still come")
print("    once per reply.")

# %%
lesson.done()
