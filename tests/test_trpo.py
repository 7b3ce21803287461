"""TRPO's conjugate gradient, Fisher-vector product and KL-bounded step (TR-1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from core.kl import categorical_kl
from core.trpo import conjugate_gradient, fisher_vector_product, trpo_step

formula = pytest.mark.formula


@formula("TR-1")
def test_conjugate_gradient_solves_spd_system(device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)
    F_mat = (a @ a.T + 0.5 * torch.eye(12, dtype=torch.float64)).to(device)
    b = torch.randn(12, generator=g, dtype=torch.float64).to(device)
    x = conjugate_gradient(lambda v: F_mat @ v, b, iterations=30)
    torch.testing.assert_close(F_mat @ x, b, rtol=1e-8, atol=1e-8)


def small_policy(device, seed=0):
    torch.manual_seed(seed)
    policy = torch.nn.Linear(3, 4).to(device).double()
    states = torch.randn(64, 3, dtype=torch.float64, device=device)
    return policy, states


@formula("TR-1")
def test_fisher_vector_product_equals_explicit_hessian_of_kl(device):
    policy, states = small_policy(device)
    params = list(policy.parameters())
    old_logits = policy(states).detach()
    theta0 = parameters_to_vector(params).detach().clone()

    def kl_at(flat):
        weight, bias = flat[:12].view(4, 3), flat[12:]
        return categorical_kl(old_logits, states @ weight.T + bias).mean()

    hessian = torch.autograd.functional.hessian(kl_at, theta0)  # (16, 16): the Fisher matrix at θ_old
    v = torch.randn(theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    fvp = fisher_vector_product(lambda: categorical_kl(old_logits, policy(states)).mean(), params, v, damping=0.1)
    torch.testing.assert_close(fvp, hessian @ v + 0.1 * v, rtol=1e-7, atol=1e-9)


@formula("TR-1")
@pytest.mark.parametrize("max_kl", [0.001, 0.01, 0.05])
def test_trpo_step_respects_kl_bound_and_improves_surrogate(max_kl, device):
    policy, states = small_policy(device, seed=2)
    params = list(policy.parameters())
    with torch.no_grad():
        old_logits = policy(states)
        actions = torch.distributions.Categorical(logits=old_logits).sample()
        old_logp = F.log_softmax(old_logits, -1).gather(1, actions[:, None]).squeeze(1)
    advantages = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)

    def surrogate():
        logp = F.log_softmax(policy(states), -1).gather(1, actions[:, None]).squeeze(1)
        return (torch.exp(logp - old_logp) * advantages).mean()  # E[ρ A]

    def kl():
        return categorical_kl(old_logits, policy(states)).mean()

    before = parameters_to_vector(params).detach().clone()
    info = trpo_step(params, surrogate, kl, max_kl=max_kl)
    assert info["accepted"] == 1.0
    assert info["improvement"] > 0
    assert info["kl"] <= max_kl
    assert info["kl"] > 0.1 * max_kl  # the step uses the trust region, not a timid fraction of it
    assert not torch.equal(before, parameters_to_vector(params))
    vector_to_parameters(before, params)


@formula("TR-1")
def test_trpo_full_step_is_the_natural_gradient_scaled_to_the_kl_bound(device):
    """Δθ = √(2δ / sᵀFs) · s with s = F⁻¹g, F the explicit Hessian of the KL (plus damping), solved
    directly; for a small δ the line search keeps the full step and the KL it reaches is ≈ ½ΔθᵀHΔθ."""
    policy, states = small_policy(device, seed=4)
    params = list(policy.parameters())
    max_kl, damping = 1e-4, 0.1
    with torch.no_grad():
        old_logits = policy(states)
        actions = torch.distributions.Categorical(logits=old_logits).sample()
        old_logp = F.log_softmax(old_logits, -1).gather(1, actions[:, None]).squeeze(1)
    # large advantages: CG stops at an absolute residual (1e-5), small beside this gradient
    advantages = 100 * torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(device)
    theta0 = parameters_to_vector(params).detach().clone()

    def logits_at(flat):
        return states @ flat[:12].view(4, 3).T + flat[12:]

    def surrogate_at(flat):
        logp = F.log_softmax(logits_at(flat), -1).gather(1, actions[:, None]).squeeze(1)
        return (torch.exp(logp - old_logp) * advantages).mean()

    def kl_at(flat):
        return categorical_kl(old_logits, logits_at(flat)).mean()

    g = torch.autograd.functional.jacobian(surrogate_at, theta0)
    hessian = torch.autograd.functional.hessian(kl_at, theta0)
    fisher = hessian + damping * torch.eye(16, dtype=torch.float64, device=device)
    s = torch.linalg.solve(fisher, g)
    expected = torch.sqrt(2 * max_kl / (s @ fisher @ s)) * s

    info = trpo_step(params, lambda: surrogate_at(parameters_to_vector(params)),
                     lambda: kl_at(parameters_to_vector(params)), max_kl=max_kl, cg_iterations=50, damping=damping)
    assert info["accepted"] == 1.0 and info["step_fraction"] == 1.0
    step = parameters_to_vector(params).detach() - theta0
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-8)
    assert info["kl"] == pytest.approx(float(0.5 * expected @ hessian @ expected), rel=0.05)
    assert info["kl"] > 0.5 * max_kl  # the damping keeps it under δ, but not by half
    vector_to_parameters(theta0, params)
