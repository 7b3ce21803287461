"""Policy-gradient formulas (PG-1 … PG-8) and the sequence ratio (IS-2), each checked against an
independent computation: enumeration, autograd through an exact sum, a plain loop, or a
fixed-seed statistic with a stated tolerance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.kl import kl_regularized_objective
from core.losses import ratio_surrogate
from core.preference import sequence_logprobs
from core.returns import discounted_returns, td_residuals
from core.surrogates import score_function_surrogate

formula = pytest.mark.formula
f64 = torch.float64


def toy_rlhf(device="cpu"):
    """3 prompts × 4 replies: prompt distribution D, rewards r(x, y), policy logits θ (x, y)."""
    g = torch.Generator().manual_seed(0)
    D = torch.tensor([0.5, 0.3, 0.2], dtype=f64)
    r = torch.rand(3, 4, generator=g, dtype=f64)
    theta = torch.randn(3, 4, generator=g, dtype=f64)
    return D.to(device), r.to(device), theta.to(device).requires_grad_(True)


def per_copy_gradients(logits_row, samples, weights):
    """∇_θ mean_i[log π(y_i) · w_i] separately for each row of `samples` (R, N): returns (R, K)."""
    copies = logits_row.detach().repeat(samples.shape[0], 1).requires_grad_(True)  # (R, K)
    logp = F.log_softmax(copies, -1).gather(1, samples)  # (R, N)
    (grads,) = torch.autograd.grad(score_function_surrogate(logp, weights).mean(dim=1).sum(), copies)
    return grads


# ----------------------------------------------------------------------------------------------
# PG-1: the objective is an expectation over prompts x ∼ D of per-prompt expectations (E1)
# ----------------------------------------------------------------------------------------------


def objective_by_loops(D, r, probs):
    """J = Σ_x D(x) Σ_y π(y|x) r(x, y), with plain Python loops."""
    return sum(float(D[x]) * sum(float(probs[x, y]) * float(r[x, y]) for y in range(r.shape[1]))
               for x in range(r.shape[0]))


def project_objective(D, r, theta):
    """J(θ) from core: the per-prompt expected reward of `kl_regularized_objective` at β = 0, averaged
    over x ∼ D (the reference policy does not matter when β = 0)."""
    per_prompt = kl_regularized_objective(theta, torch.zeros_like(theta), r, beta=0.0)
    return (D * per_prompt).sum(), per_prompt


@formula("PG-1")
def test_objective_is_the_prompt_average_of_per_prompt_expectations(device):
    D, r, theta = toy_rlhf(device)
    probs = F.softmax(theta, -1).detach()
    J, per_prompt = project_objective(D, r, theta.detach())
    assert float(J) == pytest.approx(objective_by_loops(D, r, probs), rel=1e-12)
    # erratum E1: D weighs prompts. A point mass on prompt x gives that prompt's expected reward.
    for x in range(3):
        point = F.one_hot(torch.tensor(x), 3).to(f64).to(device)
        assert float(per_prompt[x]) == pytest.approx(objective_by_loops(point, r, probs), rel=1e-12)
    # Sampling x ∼ D, then y ∼ π(·|x), and averaging r estimates J: within 4 standard errors.
    g = torch.Generator().manual_seed(1)
    n = 200_000
    xs = torch.multinomial(D.cpu(), n, replacement=True, generator=g)
    ys = torch.multinomial(probs.cpu()[xs], 1, generator=g).squeeze(1)
    sampled = r.cpu()[xs, ys]
    assert abs(float(sampled.mean()) - float(J)) < 4 * float(sampled.std()) / math.sqrt(n)


@formula("PG-1")
def test_gradient_of_the_objective_is_the_prompt_average_of_policy_gradients(device):
    """Note 000: E_{x∼D}[∇E[r|x]] = ∇E_{x∼D}[E[r|x]]; the score function over (x, y) pairs estimates it."""
    D, r, theta = toy_rlhf(device)
    (grad_J,) = torch.autograd.grad(project_objective(D, r, theta)[0], theta)
    # by hand: ∂/∂θ[x, y] of D(x) Σ_y' π(y'|x) r(x, y') = D(x) π(y|x) (r(x, y) − E[r|x])
    probs = F.softmax(theta, -1).detach()
    hand = D[:, None] * probs * (r - (probs * r).sum(-1, keepdim=True))
    torch.testing.assert_close(grad_J, hand, rtol=1e-12, atol=1e-14)
    g = torch.Generator().manual_seed(2)
    n = 200_000
    xs = torch.multinomial(D.cpu(), n, replacement=True, generator=g).to(device)
    ys = torch.multinomial(probs.cpu()[xs.cpu()], 1, generator=g).squeeze(1).to(device)
    logp = F.log_softmax(theta, -1)[xs, ys]
    (estimate,) = torch.autograd.grad(score_function_surrogate(logp, r[xs, ys]).mean(), theta)
    assert float((estimate - grad_J).abs().max()) < 0.01  # MC error ≈ 0.5/√n ≈ 0.001 per entry


# ----------------------------------------------------------------------------------------------
# PG-2, PG-3
# ----------------------------------------------------------------------------------------------


@formula("PG-2")
def test_sampling_mean_approaches_the_exact_sum(device):
    _, r, theta = toy_rlhf(device)
    probs = F.softmax(theta, -1).detach()[0]
    exact = float(kl_regularized_objective(theta[0].detach(), torch.zeros(4, dtype=f64, device=device), r[0], 0.0))
    assert exact == pytest.approx(sum(float(probs[y]) * float(r[0, y]) for y in range(4)), rel=1e-12)
    g = torch.Generator().manual_seed(3)
    errors = []
    for n in (1_000, 16_000, 256_000):
        ys = torch.multinomial(probs.cpu(), n, replacement=True, generator=g)
        sample = r[0].cpu()[ys]
        error = abs(float(sample.mean()) - exact)
        assert error < 4 * float(sample.std()) / math.sqrt(n)
        errors.append(error)
    assert errors[-1] < 0.005


@formula("PG-3")
def test_log_derivative_trick_by_autograd_on_a_nonlinear_policy():
    """∇π(y|x) (autograd through softmax) equals the gradient of the project's score-function
    surrogate log π(y|x)·stopgrad(π(y|x)), which is π ∇log π."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).double()
    x = torch.randn(3, dtype=f64)
    params = list(net.parameters())
    for y in range(5):
        pi_y = F.softmax(net(x), -1)[y]
        grad_pi = torch.autograd.grad(pi_y, params)  # ∇π(y|x)
        log_pi_y = F.log_softmax(net(x), -1)[y]
        grad_trick = torch.autograd.grad(score_function_surrogate(log_pi_y, pi_y), params)  # π ∇log π
        for a, b in zip(grad_pi, grad_trick):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert any(float(a.abs().max()) > 1e-3 for a in grad_pi)  # not a trivially zero case


# ----------------------------------------------------------------------------------------------
# PG-5: Monte Carlo error ∝ 1/√N
# ----------------------------------------------------------------------------------------------


@formula("PG-5")
def test_monte_carlo_error_halves_when_samples_quadruple(device):
    _, r, theta = toy_rlhf(device)
    logits, reward = theta[0].detach(), r[0]
    probs = F.softmax(logits, -1)
    exact_logits = logits.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((F.softmax(exact_logits, -1) * reward).sum(), exact_logits)
    # The variance of a one-sample estimate, by enumeration: E‖r ∇log π − ∇J‖².
    one_sample = per_copy_gradients(logits, torch.arange(4, device=device)[:, None], reward[:, None])  # (4, K)
    single_var = float((probs[:, None] * (one_sample - exact) ** 2).sum())
    g = torch.Generator().manual_seed(4)
    repeats = 2_000
    rmse = {}
    for n in (50, 200):
        ys = torch.multinomial(probs.cpu(), repeats * n, replacement=True, generator=g).view(repeats, n).to(device)
        errors = per_copy_gradients(logits, ys, reward[ys]) - exact
        rmse[n] = math.sqrt(float(errors.pow(2).sum(1).mean()))
        # RMSE(N) = √(Var₁/N): 2000 repeats measure it to a few percent
        assert rmse[n] == pytest.approx(math.sqrt(single_var / n), rel=0.06)
    assert rmse[50] / rmse[200] == pytest.approx(2.0, abs=0.15)


# ----------------------------------------------------------------------------------------------
# PG-6: baselines (E4)
# ----------------------------------------------------------------------------------------------


@formula("PG-6")
def test_action_independent_baselines_have_zero_expected_gradient(device):
    _, r, theta = toy_rlhf(device)
    logp = F.log_softmax(theta, -1)
    probs = logp.exp().detach()
    for baseline in (torch.full((3, 4), 5.0, dtype=f64),  # a constant
                     torch.tensor([[1.0], [-2.0], [0.3]], dtype=f64).expand(3, 4)):  # one value per prompt b(x)
        (grad,) = torch.autograd.grad((probs * score_function_surrogate(logp, baseline.to(device))).sum(), theta,
                                      retain_graph=True)
        torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0)
    # a "baseline" that depends on the action is not allowed: it shifts the expected gradient
    depends_on_action = torch.zeros(3, 4, dtype=f64, device=device)
    depends_on_action[:, 0] = 1.0
    (grad,) = torch.autograd.grad((probs * score_function_surrogate(logp, depends_on_action)).sum(), theta)
    assert float(grad.abs().max()) > 0.05


@formula("PG-6")
def test_a_baseline_keeps_the_gradient_and_lowers_the_variance(device):
    logits = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.0], dtype=f64, device=device)
    reward = torch.tensor([10.0, 10.5, 11.0, 9.0, 10.2], dtype=f64, device=device)  # large, all positive
    probs = F.softmax(logits, -1)
    per_reply = {}
    for name, b in (("none", 0.0), ("mean", float((probs * reward).sum()))):
        per_reply[name] = per_copy_gradients(logits, torch.arange(5, device=device)[:, None], (reward - b)[:, None])
    mean = {k: (probs[:, None] * v).sum(0) for k, v in per_reply.items()}
    var = {k: float((probs[:, None] * (v - mean[k]) ** 2).sum()) for k, v in per_reply.items()}
    torch.testing.assert_close(mean["mean"], mean["none"], atol=1e-12, rtol=0)  # same expected gradient
    assert var["mean"] < var["none"] / 50  # exact variances: ≈ 0.26 vs ≈ 81
    # sampled with a fixed seed: the same picture
    g = torch.Generator().manual_seed(5)
    ys = torch.multinomial(probs.cpu(), 4_000, replacement=True, generator=g).to(device)
    sampled = {k: per_copy_gradients(logits, ys[:, None], (reward[ys] - (0.0 if k == "none" else
               float((probs * reward).sum())))[:, None]).var(0).sum() for k in ("none", "mean")}
    for k in sampled:
        assert float(sampled[k]) == pytest.approx(var[k], rel=0.1)


# ----------------------------------------------------------------------------------------------
# PG-7: the policy gradient theorem on a small MDP
# ----------------------------------------------------------------------------------------------

START = torch.tensor([0.6, 0.4, 0.0], dtype=f64)


@formula("PG-7")
def test_policy_gradient_theorem_on_a_small_mdp(small_mdp):
    theta = torch.tensor([[0.2, -0.1], [0.0, 0.3], [0.5, -0.4]], dtype=f64, requires_grad=True)
    pi, P_pi, V, Q, _ = small_mdp.solve(theta)
    J = START @ V  # J = E_{s₀}[V(s₀)]
    (exact,) = torch.autograd.grad(J, theta)
    pi, P_pi, V, Q = (t.detach() for t in (pi, P_pi, V, Q))
    torch.testing.assert_close((pi * Q).sum(-1), V)  # V(s) = E_a[Q(s, a)]
    # discounted visitation d(s) = Σ_t γ^t P(s_t = s), by iterating the chain (not by a solve)
    visitation, occupancy = torch.zeros(3, dtype=f64), START.clone()
    for t in range(600):
        visitation += small_mdp.gamma**t * occupancy
        occupancy = occupancy @ P_pi
    logp = F.log_softmax(theta, -1)
    # ∇J = Σ_s d(s) Σ_a π(a|s) ∇log π(a|s) Q(s, a)
    (theorem,) = torch.autograd.grad((visitation[:, None] * pi * score_function_surrogate(logp, Q)).sum(), theta,
                                     retain_graph=True)
    torch.testing.assert_close(theorem, exact, rtol=1e-9, atol=1e-10)
    # a uniform average over states is a different vector: the state weights matter
    uniform = torch.full((3,), visitation.sum() / 3, dtype=f64)
    (wrong,) = torch.autograd.grad((uniform[:, None] * pi * score_function_surrogate(logp, Q)).sum(), theta)
    assert float((wrong - exact).abs().max()) > 0.1


# ----------------------------------------------------------------------------------------------
# PG-8: the six choices of Ψ on a finite-horizon MDP, by enumerating every trajectory
# ----------------------------------------------------------------------------------------------

H = 3
P2 = torch.tensor([[[0.8, 0.2], [0.3, 0.7]], [[0.6, 0.4], [0.1, 0.9]]], dtype=f64)  # P2[s, a, s']
R2 = torch.tensor([[1.0, 0.0], [0.2, 1.5]], dtype=f64)


def finite_horizon_values(theta):
    """V_t(s) (H+1, S) and Q_t(s, a) (H, S, A) by backward recursion with γ = 1."""
    pi = F.softmax(theta, -1)
    V, Qs = [torch.zeros(2, dtype=f64)], []
    for _ in range(H):
        Q_t = R2 + P2 @ V[0]
        Qs.insert(0, Q_t)
        V.insert(0, (pi * Q_t).sum(-1))
    return torch.stack(V), torch.stack(Qs)


def all_trajectories(pi):
    """Every (s_0 = 0, a_0, s_1, …, a_{H−1}, s_H) with its probability: tensors (M, H+1), (M, H), (M,)."""
    trajectories = [([0], [], 1.0)]
    for _ in range(H):
        longer = []
        for states, actions, prob in trajectories:
            s = states[-1]
            for a in range(2):
                for s_next in range(2):
                    p = prob * float(pi[s, a]) * float(P2[s, a, s_next])
                    longer.append((states + [s_next], actions + [a], p))
        trajectories = longer
    states = torch.tensor([t[0] for t in trajectories])
    actions = torch.tensor([t[1] for t in trajectories])
    probs = torch.tensor([t[2] for t in trajectories], dtype=f64)
    return states, actions, probs


def psi_estimates(theta, states, actions, rewards, V_t, Q_t):
    """Per-trajectory gradient estimates Σ_t Ψ_t ∇log π(a_t|s_t) for the six Ψ: name → (M, 4)."""
    M = states.shape[0]
    steps = torch.arange(H)
    v_now, v_next = V_t[steps, states[:, :H]], V_t[steps + 1, states[:, 1:]]
    q_now = Q_t[steps, states[:, :H], actions]
    to_go = discounted_returns(rewards, gamma=1.0)
    psis = {
        "total": to_go[:, :1].expand(M, H),
        "reward_to_go": to_go,
        "reward_to_go_minus_V": to_go - v_now,
        "Q": q_now,
        "A": q_now - v_now,
        "td_residual": td_residuals(rewards, v_now, gamma=1.0, next_values=v_next),
    }
    copies = theta.detach().repeat(M, 1, 1).requires_grad_(True)  # (M, S, A): one θ per trajectory
    logp = F.log_softmax(copies[torch.arange(M)[:, None], states[:, :H]], -1).gather(2, actions[..., None])
    out = {}
    for name, psi in psis.items():
        (grads,) = torch.autograd.grad(score_function_surrogate(logp.squeeze(-1), psi).sum(), copies,
                                       retain_graph=True)
        out[name] = grads.reshape(M, -1)
    return out


@formula("PG-8")
def test_six_psi_choices_share_the_expected_gradient_and_differ_in_variance():
    theta = torch.tensor([[0.3, -0.3], [-0.2, 0.4]], dtype=f64, requires_grad=True)
    V_t, Q_t = finite_horizon_values(theta)
    (exact,) = torch.autograd.grad(V_t[0, 0], theta)
    V_t, Q_t = V_t.detach(), Q_t.detach()
    pi = F.softmax(theta, -1).detach()
    states, actions, probs = all_trajectories(pi)
    assert len(probs) == 2 ** (2 * H) and float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    rewards = R2[states[:, :H], actions]
    estimates = psi_estimates(theta, states, actions, rewards, V_t, Q_t)
    variance = {}
    for name, g in estimates.items():
        mean = (probs[:, None] * g).sum(0)
        torch.testing.assert_close(mean, exact.flatten(), rtol=1e-9, atol=1e-12, msg=name)
        variance[name] = float((probs[:, None] * (g - mean) ** 2).sum())
    # On this MDP: causality, baselines and known values each lower the variance.
    assert variance["reward_to_go"] < variance["total"]
    assert variance["reward_to_go_minus_V"] < variance["reward_to_go"]
    assert variance["A"] < variance["Q"]
    assert variance["A"] == min(variance.values())

    # The same variances measured by sampling 40000 trajectories with a fixed seed.
    g = torch.Generator().manual_seed(6)
    M = 40_000
    s = torch.zeros(M, H + 1, dtype=torch.long)
    a = torch.zeros(M, H, dtype=torch.long)
    for t in range(H):
        a[:, t] = torch.multinomial(pi[s[:, t]], 1, generator=g).squeeze(1)
        s[:, t + 1] = torch.multinomial(P2[s[:, t], a[:, t]], 1, generator=g).squeeze(1)
    sampled = psi_estimates(theta, s, a, R2[s[:, :H], a], V_t, Q_t)
    for name, grads in sampled.items():
        assert float(grads.var(0).sum()) == pytest.approx(variance[name], rel=0.05), name
        stderr = grads.std(0) / math.sqrt(M)
        assert float(((grads.mean(0) - exact.flatten()).abs() / stderr).max()) < 4.5, name


# ----------------------------------------------------------------------------------------------
# IS-2: a reply's log-probability is the sum of its tokens' log-probs
# ----------------------------------------------------------------------------------------------

VOCAB, EOS, MAX_LEN, START_TOKEN = 4, 0, 5, 4


def bigram_tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(VOCAB + 1, VOCAB, generator=g, dtype=f64)
    return old, old + 0.4 * torch.randn(VOCAB + 1, VOCAB, generator=g, dtype=f64)


def sample_replies(table, batch, g):
    tokens = torch.zeros(batch, MAX_LEN, dtype=torch.long)
    mask = torch.zeros(batch, MAX_LEN, dtype=f64)
    previous, alive = torch.full((batch,), START_TOKEN), torch.ones(batch, dtype=torch.bool)
    for t in range(MAX_LEN):
        nxt = torch.multinomial(F.softmax(table[previous], -1), 1, generator=g).squeeze(1)
        tokens[:, t] = torch.where(alive, nxt, EOS)
        mask[:, t] = alive.to(f64)
        alive = alive & (nxt != EOS)
        previous = nxt
    return tokens, mask


def token_logprobs(table, tokens):
    previous = torch.cat([torch.full((tokens.shape[0], 1), START_TOKEN), tokens[:, :-1]], dim=1)
    return F.log_softmax(table[previous], -1).gather(2, tokens[..., None]).squeeze(-1)


@formula("IS-2")
def test_sequence_logprob_and_ratio_are_masked_sums_of_token_terms():
    old, new = bigram_tables()
    tokens, mask = sample_replies(old, 64, torch.Generator().manual_seed(7))
    assert 0 < float(mask.sum()) < mask.numel()  # replies of different lengths, with padding
    old_seq = sequence_logprobs(token_logprobs(old, tokens), mask)  # (B,)
    new_seq = sequence_logprobs(token_logprobs(new, tokens), mask)
    ratio = ratio_surrogate(new_seq, old_seq, torch.ones_like(new_seq))  # exp(Σ_t token log-ratios)
    for i in range(tokens.shape[0]):
        p_old, p_new, prev = 1.0, 1.0, START_TOKEN
        for t in range(int(mask[i].sum())):  # the plain loop: multiply token probabilities
            y = int(tokens[i, t])
            p_old *= float(F.softmax(old[prev], -1)[y])
            p_new *= float(F.softmax(new[prev], -1)[y])
            prev = y
        assert float(old_seq[i]) == pytest.approx(math.log(p_old), rel=1e-10)
        assert float(ratio[i]) == pytest.approx(p_new / p_old, rel=1e-10)


@formula("IS-2")
def test_sequence_probabilities_form_a_distribution_over_replies():
    """Σ over every possible reply of exp(Σ_t log π(y_t|y_<t)) = 1, by enumeration."""
    old, _ = bigram_tables(1)
    replies = []
    frontier = [()]
    while frontier:
        reply = frontier.pop()
        for y in range(VOCAB):
            longer = reply + (y,)
            if y == EOS or len(longer) == MAX_LEN:
                replies.append(longer)
            else:
                frontier.append(longer)
    tokens = torch.tensor([list(r) + [EOS] * (MAX_LEN - len(r)) for r in replies])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (MAX_LEN - len(r)) for r in replies], dtype=f64)
    total = sequence_logprobs(token_logprobs(old, tokens), mask).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-12)
