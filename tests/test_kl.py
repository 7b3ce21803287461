"""KL: exact categorical KL, the k1/k2/k3 estimators, their gradients, and the β controllers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.kl import (
    AdaptiveKLController,
    FixedKLController,
    ProportionalKLController,
    categorical_kl,
    kl_estimate,
    make_kl_controller,
)

formula = pytest.mark.formula

Q_LOGITS = torch.tensor([1.0, 0.2, -0.5, 0.8, -1.5], dtype=torch.float64)
P_LOGITS = torch.tensor([0.1, 1.0, 0.3, -1.0, 0.4], dtype=torch.float64)


def exact_kl(q_logits, p_logits):
    q, p = F.softmax(q_logits, -1), F.softmax(p_logits, -1)
    return sum(float(q[i]) * (float(q[i].log()) - float(p[i].log())) for i in range(len(q)))


@formula("KL-1")
def test_categorical_kl_equals_enumeration(device):
    got = categorical_kl(Q_LOGITS.to(device), P_LOGITS.to(device))
    assert float(got) == pytest.approx(exact_kl(Q_LOGITS, P_LOGITS), rel=1e-12)
    assert float(categorical_kl(Q_LOGITS.to(device), Q_LOGITS.to(device))) == pytest.approx(0.0, abs=1e-12)
    # not symmetric
    assert abs(float(categorical_kl(P_LOGITS, Q_LOGITS)) - float(got)) > 1e-3


@formula("KL-2")
def test_estimator_expectations_by_enumeration(device):
    logq, logp = F.log_softmax(Q_LOGITS, -1).to(device), F.log_softmax(P_LOGITS, -1).to(device)
    q = logq.exp()
    kl = exact_kl(Q_LOGITS, P_LOGITS)
    expectation = {k: float((q * kl_estimate(logq, logp, k)).sum()) for k in ("k1", "k2", "k3")}
    assert expectation["k1"] == pytest.approx(kl, rel=1e-12)  # unbiased (erratum E8: not biased)
    assert expectation["k3"] == pytest.approx(kl, rel=1e-12)  # unbiased
    assert abs(expectation["k2"] - kl) > 0.01  # biased


@formula("KL-2")
def test_estimator_bias_sign_and_variance_by_sampling():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    samples = torch.multinomial(F.softmax(Q_LOGITS, -1), n, replacement=True, generator=g)
    logq, logp = F.log_softmax(Q_LOGITS, -1)[samples], F.log_softmax(P_LOGITS, -1)[samples]
    kl = exact_kl(Q_LOGITS, P_LOGITS)
    est = {k: kl_estimate(logq, logp, k) for k in ("k1", "k2", "k3")}
    for k in ("k1", "k3"):  # unbiased: within 4 standard errors
        assert abs(float(est[k].mean()) - kl) < 4 * float(est[k].std()) / n**0.5
    assert abs(float(est["k2"].mean()) - kl) > 10 * float(est["k2"].std()) / n**0.5  # biased
    assert float((est["k1"] < 0).float().mean()) > 0.2  # k1 is often negative
    assert float(est["k2"].min()) >= 0 and float(est["k3"].min()) >= 0
    assert float(est["k3"].var()) < float(est["k1"].var())  # k3: lower variance than k1


@formula("KL-3")
def test_estimator_gradients_as_losses_exactly(device):
    """E_{x∼q}[∇_θ k(x)] by enumeration, with q = softmax(θ) and p fixed."""
    theta = Q_LOGITS.clone().to(device).requires_grad_(True)
    logp = F.log_softmax(P_LOGITS, -1).to(device)

    def expected_grad(kind):
        logq = F.log_softmax(theta, -1)
        weights = logq.exp().detach()  # the sampling distribution is not differentiated
        (grad,) = torch.autograd.grad((weights * kl_estimate(logq, logp, kind)).sum(), theta)
        return grad

    (grad_reverse,) = torch.autograd.grad(categorical_kl(theta, P_LOGITS.to(device)), theta)  # ∇KL[q‖p]
    (grad_forward,) = torch.autograd.grad(categorical_kl(P_LOGITS.to(device), theta), theta)  # ∇KL[p‖q]
    torch.testing.assert_close(expected_grad("k1"), torch.zeros_like(theta), atol=1e-12, rtol=0)
    torch.testing.assert_close(expected_grad("k2"), grad_reverse)
    torch.testing.assert_close(expected_grad("k3"), grad_forward)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


@formula("TR-3")
def test_adaptive_controller_trace():
    ctl = AdaptiveKLController(beta=1.0, target=0.01)
    trace = [ctl.update(d, 1) for d in (0.001, 0.05, 0.012, 0.02, 0.0066, 0.0067)]
    # 0.001 < 0.01/1.5 → halve; 0.05 > 0.015 → double; 0.012 in band → keep; 0.02 → double;
    # 0.0066 < 0.00667 → halve; 0.0067 in band → keep
    assert trace == pytest.approx([0.5, 1.0, 1.0, 2.0, 1.0, 1.0])


@formula("TR-4")
def test_proportional_controller_trace():
    ctl = ProportionalKLController(beta=1.0, target=0.1, horizon=100)
    trace = [ctl.update(d, 10) for d in (0.15, 0.05, 0.11, 0.1)]
    # e = clip(d/d_targ − 1, ±0.2) = 0.2, −0.2, 0.1, 0 → β ×= 1 + e·10/100
    expected, beta = [], 1.0
    for e in (0.2, -0.2, 0.1, 0.0):
        beta *= 1 + e * 10 / 100
        expected.append(beta)
    assert trace == pytest.approx(expected)


def test_controller_factory_and_validation():
    assert isinstance(make_kl_controller("fixed", 0.3), FixedKLController)
    assert make_kl_controller("fixed", 0.3).update(99.0, 1) == 0.3
    assert isinstance(make_kl_controller("adaptive", 1.0, 0.01), AdaptiveKLController)
    with pytest.raises(ValueError, match="'adaptive' KL controller needs target"):
        make_kl_controller("adaptive", 1.0, None)
    with pytest.raises(ValueError, match="target must be > 0"):
        AdaptiveKLController(beta=1.0, target=0.0)
    with pytest.raises(ValueError, match="unknown KL controller"):
        make_kl_controller("pid", 1.0, 0.1)


@formula("TR-3")
@formula("TR-4")
@pytest.mark.parametrize("kind", ["adaptive", "proportional"])
def test_a_kl_of_zero_forever_cannot_take_beta_below_its_floor(kind):
    """Fed KL = 0 for 10,000 updates, β falls to β₀/bound and stays there (the unbounded doubling
    rule would reach 0.3/2^10000 = 0); a KL far above target raises it to β₀·bound at most."""
    ctl = make_kl_controller(kind, 0.3, 3.0, horizon=100.0, bound=10.0)
    assert ctl.limits() == pytest.approx((0.03, 3.0))
    for _ in range(10_000):
        beta = ctl.update(0.0, 64)
        assert beta >= 0.03 - 1e-12
    assert beta == pytest.approx(0.03)
    for _ in range(10_000):
        beta = ctl.update(1e6, 64)
        assert beta <= 3.0 + 1e-12
    assert beta == pytest.approx(3.0)


@formula("TR-4")
def test_proportional_update_by_hand_with_its_bounds_and_its_step_cap():
    """β(1 + clip(d/d_targ − 1, ±0.2)·n/H), worked by hand: d = 4.5, d_targ = 3 → e = clip(0.5) = 0.2,
    n/H = 192/1000 → β = 0.3·1.0384 = 0.31152; d = 2.7 → e = −0.1 → 0.31152·0.9808 = 0.30553...;
    n/H is capped at 1 (one update moves β by ±20% at most, never through 0)."""
    ctl = ProportionalKLController(beta=0.3, target=3.0, horizon=1000.0, bound=10.0)
    assert ctl.update(4.5, 192) == pytest.approx(0.3 * 1.0384)
    assert ctl.update(2.7, 192) == pytest.approx(0.3 * 1.0384 * 0.9808)
    big = ProportionalKLController(beta=1.0, target=1.0, horizon=10.0, bound=None)
    assert big.update(0.0, 1000) == pytest.approx(0.8)  # not 1 − 0.2·100 = −19


@formula("TR-3")
def test_warm_up_and_cadence_live_in_the_controller():
    """warmup = 4, every = 3: β is held while the KL is below the band's low edge (3/1.5 = 2) for
    the first 3 calls; the KL reaching 2 starts the schedule, and then β changes on every third call
    (the rule is applied to that call's KL)."""
    ctl = AdaptiveKLController(beta=0.4, target=3.0, warmup=4, every=3, bound=100.0)
    assert ctl.band() == pytest.approx((2.0, 4.5))
    trace = [ctl.update(d, 1) for d in (0.0, 0.5, 1.0, 2.1, 0.1, 0.1, 0.1, 9.0, 9.0)]
    # held (3 calls below 2); 2.1 starts: calls 1, 2 of 3 → held; 3rd (0.1 < 2) halves; then 0.1, 9.0 held, 9.0 doubles
    assert trace == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.4])
    slow = AdaptiveKLController(beta=0.4, target=3.0, warmup=4, every=1)
    trace = [slow.update(0.0, 1) for _ in range(5)]  # the KL never reaches the band: warm-up ends at call 4
    assert trace == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.1])
    with pytest.raises(ValueError, match="bound must be ≥ 1"):
        AdaptiveKLController(beta=0.4, target=3.0, bound=0.5)
