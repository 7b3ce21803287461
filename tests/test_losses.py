"""Surrogates, value loss, Bradley–Terry and the masked reductions, checked by autograd,
enumeration, loops and hand cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from core.diagnostics import approx_kl, clip_fraction, explained_variance
from core.kl import kl_estimate
from core.losses import clipped_surrogate, entropy_from_logits, ratio_surrogate, value_loss
from core.masked import masked_mean, masked_whiten, reduce_loss
from core.preference import bradley_terry_loss
from core.surrogates import kl_penalty_surrogate, score_function_surrogate

formula = pytest.mark.formula


def bandit(device, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    rewards = torch.randn(K, generator=g, dtype=torch.float64).to(device)
    return theta, rewards


@formula("PG-4")
def test_score_function_gradient_equals_exact_gradient_by_enumeration(device):
    theta, r = bandit(device)
    (exact,) = torch.autograd.grad((F.softmax(theta, -1) * r).sum(), theta)  # ∇ Σ_y π(y) r(y)
    logp = F.log_softmax(theta, -1)
    probs = logp.exp().detach()
    # E_{y∼π}[r(y) ∇ log π(y)] = Σ_y π(y) ∇[score_function_surrogate(log π(y), r(y))]
    (estimate,) = torch.autograd.grad((probs * score_function_surrogate(logp, r)).sum(), theta)
    torch.testing.assert_close(estimate, exact)


@formula("PG-4")
def test_score_function_monte_carlo_estimate_is_close(device):
    theta, r = bandit(device)
    (exact,) = torch.autograd.grad((F.softmax(theta, -1) * r).sum(), theta)
    g = torch.Generator().manual_seed(1)
    samples = torch.multinomial(F.softmax(theta, -1).detach().cpu(), 200_000, replacement=True, generator=g).to(device)
    logp = F.log_softmax(theta, -1)[samples]
    (estimate,) = torch.autograd.grad(score_function_surrogate(logp, r[samples]).mean(), theta)
    assert (estimate - exact).abs().max() < 0.02  # MC error ≈ 1/√N · std ≈ 0.003 here


@formula("IS-1")
def test_ratio_surrogate_gradient_at_old_policy_is_the_policy_gradient(device):
    theta, r = bandit(device, seed=3)
    logp = F.log_softmax(theta, -1)
    old = logp.detach()
    probs = old.exp()
    (via_ratio,) = torch.autograd.grad((probs * ratio_surrogate(logp, old, r)).sum(), theta)
    (exact,) = torch.autograd.grad((F.softmax(theta, -1) * r).sum(), theta)
    torch.testing.assert_close(via_ratio, exact)
    assert ratio_surrogate(logp, old, r).detach().tolist() == pytest.approx(r.tolist())  # ρ = 1 at θ_old


@formula("CL-1")
def test_clipped_surrogate_hand_cases(device):
    eps = 0.2
    ratio = torch.tensor([0.5, 1.0, 1.1, 1.5, 0.5, 1.5], device=device)
    adv = torch.tensor([1.0, 2.0, 1.0, 1.0, -1.0, -1.0], device=device)
    got = clipped_surrogate(ratio.log(), torch.zeros_like(ratio), adv, clip_coef=eps)
    # min(ρA, clip(ρ)A):  0.5·1 vs 0.8·1 → 0.5;  2;  1.1;  1.5 vs 1.2 → 1.2;  −0.5 vs −0.8 → −0.8;  −1.5 vs −1.2 → −1.5
    assert got.tolist() == pytest.approx([0.5, 2.0, 1.1, 1.2, -0.8, -1.5], rel=1e-6)


CASES = [  # (A, ρ, gradient nonzero with min, gradient nonzero with clip alone)
    (+1.0, 0.5, True, False),   # A>0, ρ<1−ε: min keeps the gradient (can undo a bad step)
    (+1.0, 1.0, True, True),    # inside the trust region
    (+1.0, 1.5, False, False),  # A>0, ρ>1+ε: already improved enough
    (-1.0, 0.5, False, False),  # A<0, ρ<1−ε: already lowered enough
    (-1.0, 1.0, True, True),
    (-1.0, 1.5, True, False),   # A<0, ρ>1+ε: min keeps the gradient
]


@formula("CL-2")
@pytest.mark.parametrize("adv,ratio,with_min,clip_alone", CASES)
def test_why_the_min_six_cases(adv, ratio, with_min, clip_alone, device):
    for use_min, expected_nonzero in ((True, with_min), (False, clip_alone)):
        logp = torch.tensor([math.log(ratio)], device=device, requires_grad=True)
        objective = clipped_surrogate(logp, torch.zeros(1, device=device), torch.tensor([adv], device=device),
                                      clip_coef=0.2, use_min=use_min)
        (grad,) = torch.autograd.grad(objective.sum(), logp)
        if expected_nonzero:
            assert float(grad) == pytest.approx(adv * ratio)  # d(ρA)/d log π = ρA
        else:
            assert float(grad) == 0.0


@formula("CL-3")
@settings(max_examples=200, deadline=None)
@given(log_ratio=st.floats(-3, 3), adv=st.floats(-5, 5), eps=st.floats(0.01, 0.5))
def test_clipped_surrogate_is_a_lower_bound(log_ratio, adv, eps):
    logp, zero, a = torch.tensor([log_ratio]), torch.zeros(1), torch.tensor([adv])
    clipped = clipped_surrogate(logp, zero, a, clip_coef=eps)
    plain = ratio_surrogate(logp, zero, a)
    assert float(clipped) <= float(plain) + 1e-6


@formula("CL-3")
def test_clipped_surrogate_matches_to_first_order_at_ratio_one(device):
    logp = torch.zeros(3, device=device, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5], device=device)
    (g_clip,) = torch.autograd.grad(clipped_surrogate(logp, logp.detach(), adv, clip_coef=0.2).sum(), logp)
    (g_plain,) = torch.autograd.grad(ratio_surrogate(logp, logp.detach(), adv).sum(), logp)
    torch.testing.assert_close(g_clip, g_plain)


@formula("DA-1")
def test_clip_higher_hand_case(device):
    ratio = torch.tensor([1.25, 1.4, 0.7], device=device)
    adv = torch.tensor([1.0, 1.0, -1.0], device=device)
    got = clipped_surrogate(ratio.log(), torch.zeros(3, device=device), adv, clip_coef=0.2, clip_coef_high=0.28)
    # 1.25 < 1.28 stays; 1.4 clips to 1.28; 0.7 (A<0) clips to 0.8 and min picks −0.8
    assert got.tolist() == pytest.approx([1.25, 1.28, -0.8], rel=1e-6)


@formula("TR-2")
def test_kl_penalty_surrogate_value_and_gradient(device):
    old = torch.tensor([-1.0, -0.5], device=device)
    new = torch.tensor([-0.8, -0.9], device=device, requires_grad=True)
    adv = torch.tensor([2.0, -1.0], device=device)
    beta = 0.7
    kl = kl_estimate(old, new, "k3")  # k3 estimate of KL[π_old‖π_θ] on samples of π_old
    objective = kl_penalty_surrogate(new, old, adv, kl, beta=beta)
    rho = torch.exp(new.detach() - old)
    hand_kl = rho - 1 - torch.log(rho)
    torch.testing.assert_close(objective.detach(), rho * adv - beta * hand_kl)
    (grad,) = torch.autograd.grad(objective.sum(), new)
    torch.testing.assert_close(grad, rho * adv - beta * (rho - 1))  # d/d log π of ρA − β(ρ − 1 − log ρ)


@formula("CL-4")
def test_value_loss_hand_case_with_and_without_clipping(device):
    values = torch.tensor([1.5, 0.9], device=device)
    old = torch.tensor([1.0, 1.0], device=device)
    returns = torch.tensor([2.0, 2.0], device=device)
    # ½(V − V^targ)²: errors [−0.5, −1.1] → [0.125, 0.605] (the ½ of baselines, CleanRL and TRL)
    assert value_loss(values, returns).tolist() == pytest.approx([0.125, 0.605])
    # clipped: V_old + clip(V − V_old, ±0.2) = [1.2, 0.9] → squared errors [0.64, 1.21]; ½·max per element
    assert value_loss(values, returns, old, vf_clip_coef=0.2).tolist() == pytest.approx([0.32, 0.605])


@formula("CL-4")
def test_value_loss_gradient_is_the_error(device):
    """With the ½, d loss/dV = V − V^targ (the reference code's scale: vf_coef 0.5 = CleanRL's 0.5)."""
    values = torch.tensor([1.5, 0.9, -2.0], device=device, requires_grad=True)
    returns = torch.tensor([2.0, 2.0, 1.0], device=device)
    (grad,) = torch.autograd.grad(value_loss(values, returns).sum(), values)
    torch.testing.assert_close(grad, values.detach() - returns)


@formula("CL-4")
def test_entropy_of_uniform_and_one_hot(device):
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]], device=device)
    assert entropy_from_logits(logits).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


@formula("RM-1")
def test_bradley_terry_value_gradient_and_shift_invariance(device):
    chosen = torch.tensor([2.0, 0.0, -1.0], device=device, requires_grad=True)
    rejected = torch.tensor([1.0, 0.0, 3.0], device=device)
    loss = bradley_terry_loss(chosen, rejected)
    diff = torch.tensor([1.0, 0.0, -4.0])
    expected = [-math.log(1 / (1 + math.exp(-d))) for d in diff.tolist()]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), chosen)
    assert grad.tolist() == pytest.approx((-torch.sigmoid(-diff)).tolist(), rel=1e-6)  # −(1 − σ(Δ))
    shifted = bradley_terry_loss(chosen.detach() + 5.0, rejected + 5.0)
    torch.testing.assert_close(shifted, loss.detach())


@formula("RM-1")
def test_bradley_terry_learns_to_rank_from_noisy_labels():
    """A linear reward model trained on BT-sampled labels ranks held-out pairs by the true reward."""
    g = torch.Generator().manual_seed(0)
    dim, n = 8, 4000
    w_true = torch.randn(dim, generator=g)
    a, b = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    p_a = torch.sigmoid(a @ w_true - b @ w_true)
    a_wins = torch.rand(n, generator=g) < p_a  # noisy "human" labels
    chosen, rejected = torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a)
    w = torch.zeros(dim, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        bradley_terry_loss(chosen[:3000] @ w, rejected[:3000] @ w).mean().backward()
        opt.step()
    test_a, test_b = a[3000:], b[3000:]
    agree = ((test_a @ w > test_b @ w) == (test_a @ w_true > test_b @ w_true)).float().mean()
    assert agree > 0.9


def loop_reduce(x, mask, mode, constant=None):
    rows = []
    for i in range(x.shape[0]):
        rows.append([float(x[i, t]) for t in range(x.shape[1]) if mask[i, t]])
    if mode == "seq_mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    if mode == "token_mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    return sum(sum(r) for r in rows) / (len(rows) * constant)


@formula("GR-2")
@formula("DA-3")
@formula("DR-1")
@pytest.mark.parametrize("mode", ["seq_mean", "token_mean", "constant"])
def test_reductions_equal_plain_loops(mode, device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 7, generator=g).to(device)
    lengths = [7, 2, 5, 1]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths], device=device)
    got = reduce_loss(x, mask, loss_reduction=mode, loss_constant=10.0)
    assert float(got) == pytest.approx(loop_reduce(x.cpu(), mask.cpu(), mode, 10.0), rel=1e-5)


@formula("GR-3")
def test_length_bias_per_token_weight(device):
    """∂loss/∂x_{i,t} is each token's weight: 1/(B·|o_i|) under seq_mean, equal under the others."""
    lengths = [2, 8]
    mask = torch.tensor([[1] * n + [0] * (8 - n) for n in lengths], device=device)
    weights = {}
    for mode in ("seq_mean", "token_mean", "constant"):
        x = torch.zeros(2, 8, device=device, requires_grad=True)
        (grad,) = torch.autograd.grad(reduce_loss(x, mask, loss_reduction=mode, loss_constant=8.0), x)
        weights[mode] = (float(grad[0, 0]), float(grad[1, 0]))
    assert weights["seq_mean"] == pytest.approx((1 / (2 * 2), 1 / (2 * 8)))  # long reply: 4× smaller per token
    assert weights["token_mean"] == pytest.approx((1 / 10, 1 / 10))
    assert weights["constant"] == pytest.approx((1 / 16, 1 / 16))


def test_masked_helpers_ignore_padding(device):
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]], device=device)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], device=device)
    assert float(masked_mean(x, mask)) == pytest.approx(3.0)
    white = masked_whiten(x, mask)
    assert float(masked_mean(white, mask)) == pytest.approx(0.0, abs=1e-6)
    assert white[0, 2] == 0 and white[1, 1] == 0


@formula("KL-2")
def test_approx_kl_hand_cases(device):
    # ρ = e: (e − 1) − 1;  ρ = 1: 0;  ρ = ½: (½ − 1) + log 2
    new = torch.tensor([1.0, 0.0, -math.log(2.0)], dtype=torch.float64, device=device)
    old = torch.zeros(3, dtype=torch.float64, device=device)
    per_action = [math.e - 2.0, 0.0, math.log(2.0) - 0.5]
    assert float(approx_kl(new, old)) == pytest.approx(sum(per_action) / 3, rel=1e-12)
    mask = torch.tensor([1, 0, 1], device=device)  # padding is not counted
    assert float(approx_kl(new, old, mask)) == pytest.approx((per_action[0] + per_action[2]) / 2, rel=1e-12)


@formula("KL-2")
def test_approx_kl_estimates_the_exact_kl_from_old_to_new():
    """Actions drawn from π_old: approx_kl of their log-probs → KL[π_old‖π_θ], enumerated."""
    old_logits = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], dtype=torch.float64)
    new_logits = torch.tensor([0.1, 0.4, 0.9, -0.6, -0.2], dtype=torch.float64)
    p_old, p_new = F.softmax(old_logits, -1).tolist(), F.softmax(new_logits, -1).tolist()
    forward = sum(q * math.log(q / p) for q, p in zip(p_old, p_new))  # KL[π_old‖π_θ]
    reverse = sum(p * math.log(p / q) for q, p in zip(p_old, p_new))  # KL[π_θ‖π_old]
    n = 400_000
    actions = torch.multinomial(torch.tensor(p_old), n, replacement=True, generator=torch.Generator().manual_seed(0))
    logp_old, logp_new = F.log_softmax(old_logits, -1)[actions], F.log_softmax(new_logits, -1)[actions]
    got = float(approx_kl(logp_new, logp_old))
    log_ratio = logp_new - logp_old
    stderr = float((log_ratio.exp() - 1 - log_ratio).std()) / math.sqrt(n)
    assert abs(got - forward) < 4 * stderr  # unbiased
    assert abs(reverse - forward) > 50 * stderr  # and the direction is told apart at this n


@formula("DA-1")
def test_clip_fraction_and_explained_variance(device):
    old = torch.zeros(4, device=device)
    new = torch.log(torch.tensor([1.0, 1.1, 1.3, 0.7], device=device))
    assert float(clip_fraction(new, old, 0.2)) == pytest.approx(0.5)  # 1.3 and 0.7 lie outside [0.8, 1.2]
    assert float(clip_fraction(new, old, 0.2, clip_coef_high=0.35)) == pytest.approx(0.25)  # only 0.7 now
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    assert float(explained_variance(targets, targets)) == pytest.approx(1.0)
    assert float(explained_variance(torch.zeros(4, device=device) + 2.5, targets)) == pytest.approx(0.0, abs=1e-6)
    # residuals [0.5, −0.5, 0.5, −0.5]: Var = 1/3 against Var[targets] = 5/3 → 1 − 1/5
    predictions = targets + torch.tensor([-0.5, 0.5, -0.5, 0.5], device=device)
    assert float(explained_variance(predictions, targets)) == pytest.approx(0.8, rel=1e-6)


def test_bad_arguments(device):
    x = torch.zeros(3, device=device)
    with pytest.raises(ValueError, match="clip_coef"):
        clipped_surrogate(x, x, x, clip_coef=0.0)
    with pytest.raises(ValueError, match="shape mismatch: advantages"):
        clipped_surrogate(x, x, torch.zeros(4, device=device), clip_coef=0.2)
    with pytest.raises(ValueError, match="loss reduction mode"):
        reduce_loss(x, loss_reduction="sum")
    with pytest.raises(ValueError, match="positive constant"):
        reduce_loss(torch.zeros(2, 3, device=device), loss_reduction="constant")


@formula("DA-3")
def test_token_mean_over_the_batch_adds_up_across_minibatches(device):
    """DA-3 in minibatches: each minibatch's sum over (batch tokens / number of minibatches); the
    minibatch losses, averaged, equal the token mean of the whole batch (a plain loop), while the
    average of the per-minibatch token means does not when the minibatches hold unequal tokens."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 6, generator=g).to(device)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in (6, 5, 1, 2)], device=device)
    whole = loop_reduce(x.cpu(), mask.cpu(), "token_mean")
    n_tokens = float(mask.sum()) / 2
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    batch_level = sum(float(reduce_loss(a, m, loss_reduction="token_mean", n_tokens=n_tokens)) for a, m in halves) / 2
    per_minibatch = sum(float(reduce_loss(a, m, loss_reduction="minibatch_token_mean")) for a, m in halves) / 2
    assert batch_level == pytest.approx(whole, rel=1e-5)
    assert abs(per_minibatch - whole) > 0.05
    with pytest.raises(ValueError, match="n_tokens must be > 0"):
        reduce_loss(x, mask, loss_reduction="token_mean", n_tokens=0.0)
