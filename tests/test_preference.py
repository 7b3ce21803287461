"""DPO, IPO and KTO against hand computations with `math`, autograd and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from core.preference import dpo_loss, implicit_rewards, ipo_loss, kto_loss, kto_reference_point, preference_margin

formula = pytest.mark.formula


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# (policy chosen, policy rejected, ref chosen, ref rejected) sequence log-probs of three pairs
PAIRS = [(-3.0, -5.0, -3.5, -4.0), (-10.0, -2.0, -9.0, -2.5), (-1.0, -1.0, -1.0, -1.0)]


def pair_tensors(device, requires_grad=False):
    cols = [torch.tensor(c, dtype=torch.float64, device=device) for c in zip(*PAIRS)]
    if requires_grad:
        cols = [c.requires_grad_() for c in cols]
    return cols


@formula("DP-1")
def test_dpo_hand_case(device):
    beta = 0.5
    loss = dpo_loss(*pair_tensors(device), beta=beta)
    for i, (pc, pr, rc, rr) in enumerate(PAIRS):
        h = (pc - rc) - (pr - rr)
        assert loss[i].item() == pytest.approx(-math.log(sigmoid(beta * h)), rel=1e-12)
    assert loss[2].item() == pytest.approx(math.log(2.0))  # π_θ = π_ref: the pair is a coin flip


@formula("DP-1")
def test_dpo_is_bradley_terry_on_implicit_rewards(device):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = [(-10 * torch.rand(64, generator=g, dtype=torch.float64)).to(device) for _ in range(4)]
    for beta in (0.05, 0.3, 2.0):
        # Bradley–Terry −log σ(r⁺ − r⁻) on the implicit rewards r = β log π_θ/π_ref, in plain torch
        by_hand = -torch.log(torch.sigmoid(beta * (pc - rc) - beta * (pr - rr)))
        torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta), by_hand)
        torch.testing.assert_close(implicit_rewards(pc, rc, beta), beta * (pc - rc))
        # log Z(x) cancels: shifting both replies' policy log-probs by a per-prompt constant changes nothing
        shift = torch.randn(64, generator=g, dtype=torch.float64).to(device)
        torch.testing.assert_close(dpo_loss(pc + shift, pr + shift, rc, rr, beta), dpo_loss(pc, pr, rc, rr, beta))


@formula("DP-1")
def test_dpo_gradient_signs_and_weights(device):
    beta = 0.5
    pc, pr, rc, rr = pair_tensors(device, requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta).sum().backward()
    for i, (c, r, refc, refr) in enumerate(PAIRS):
        h = (c - refc) - (r - refr)
        weight = beta * sigmoid(-beta * h)  # larger when the implicit reward ranks the pair wrongly
        assert pc.grad[i].item() == pytest.approx(-weight)  # descent raises log π_θ(y_w)
        assert pr.grad[i].item() == pytest.approx(+weight)  # and lowers log π_θ(y_l)
    # the wrongly ranked pair (index 1: h < 0) is pushed harder than the rightly ranked one
    assert abs(pc.grad[1].item()) > abs(pc.grad[0].item())


@formula("DP-2")
def test_ipo_hand_case(device):
    tau = 0.25
    loss = ipo_loss(*pair_tensors(device), tau=tau)
    for i, (pc, pr, rc, rr) in enumerate(PAIRS):
        h = (pc - rc) - (pr - rr)
        assert loss[i].item() == pytest.approx((h - 1 / (2 * tau)) ** 2)


@formula("DP-2")
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_minimiser_is_half_inverse_tau(device, tau):
    # gradient descent on the policy's log-probs of one pair: h settles at 1/(2τ), not at +∞ as DPO would push it
    chosen = torch.tensor([-4.0], dtype=torch.float64, device=device, requires_grad=True)
    rejected = torch.tensor([-4.0], dtype=torch.float64, device=device, requires_grad=True)
    ref = torch.tensor([-4.0], dtype=torch.float64, device=device)
    optimizer = torch.optim.SGD([chosen, rejected], lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        ipo_loss(chosen, rejected, ref, ref, tau).sum().backward()
        optimizer.step()
    h = preference_margin(chosen, rejected, ref, ref).item()
    assert h == pytest.approx(1 / (2 * tau), rel=1e-6)
    # DPO on the same pair keeps increasing the margin (its loss has no finite minimiser)
    margins = []
    chosen.data.fill_(-4.0), rejected.data.fill_(-4.0)
    for _ in range(3):
        for _ in range(200):
            optimizer.zero_grad()
            dpo_loss(chosen, rejected, ref, ref, beta=1.0).sum().backward()
            optimizer.step()
        margins.append(preference_margin(chosen, rejected, ref, ref).item())
    assert margins[0] < margins[1] < margins[2]


@formula("DP-3")
def test_kto_hand_case(device):
    beta, lam_d, lam_u, z0 = 0.5, 1.0, 1.5, 0.2
    policy = torch.tensor([-2.0, -3.0, -1.0, -6.0], dtype=torch.float64, device=device)
    ref = torch.tensor([-2.5, -2.0, -1.0, -5.0], dtype=torch.float64, device=device)
    desirable = torch.tensor([True, True, False, False], device=device)
    loss = kto_loss(policy, ref, desirable, z0, beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    expected = []
    for p, r, d in zip(policy.tolist(), ref.tolist(), desirable.tolist()):
        log_ratio = p - r
        if d:
            expected.append(lam_d - lam_d * sigmoid(beta * (log_ratio - z0)))
        else:
            expected.append(lam_u - lam_u * sigmoid(beta * (z0 - log_ratio)))
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    # raising a desirable reply's log-prob lowers its loss; raising an undesirable one raises it
    policy.requires_grad_()
    kto_loss(policy, ref, desirable, z0, beta, lam_d, lam_u).sum().backward()
    assert (policy.grad[:2] < 0).all() and (policy.grad[2:] > 0).all()


@formula("DP-3")
def test_kto_reference_point_is_a_clamped_detached_kl(device):
    ref = torch.zeros(4, dtype=torch.float64, device=device)
    below = torch.tensor([-1.0, -0.5, 0.2, 0.1], dtype=torch.float64, device=device)  # mean −0.3
    assert kto_reference_point(below, ref).item() == 0.0  # clamped at zero
    above = torch.tensor([1.0, 0.5, -0.2, 0.3], dtype=torch.float64, device=device, requires_grad=True)
    z0 = kto_reference_point(above, ref)
    assert z0.item() == pytest.approx(0.4)
    assert not z0.requires_grad  # no gradient flows through z₀
    with pytest.raises(ValueError, match="mismatched pair"):
        kto_reference_point(ref[:0], ref[:0])
    with pytest.raises(ValueError, match="≥ 0"):
        kto_loss(ref, ref, ref > 0, -0.1, beta=0.1)


def test_preference_losses_refuse_bad_input(device):
    pc, pr, rc, rr = pair_tensors(device)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=-1.0)
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(pc, pr, rc, rr, tau=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        dpo_loss(pc, pr[:2], rc, rr, beta=0.1)  # a pair with its rejected side missing
    with pytest.raises(ValueError, match="NaN"):
        dpo_loss(pc, pr, rc * float("nan"), rr, beta=0.1)
    with pytest.raises(ValueError, match="desirable_weight"):
        kto_loss(pc, rc, pc > -2, 0.0, beta=0.1, desirable_weight=0.0)
