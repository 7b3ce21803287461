"""Actor–critic (AC-1) on a three-state MDP: a critic regressed to r + γV(s′) finds V^π, and the
actor gradient E[∇log π(a|s) Â] with Â = r + γV(s′) − V(s) is the policy gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.losses import value_loss
from core.returns import td_residuals
from core.surrogates import score_function_surrogate

formula = pytest.mark.formula
f64 = torch.float64

START = torch.tensor([1.0, 0.0, 0.0], dtype=f64)
THETA = torch.tensor([[0.2, -0.1], [0.0, 0.3], [0.5, -0.4]], dtype=f64)


def expected_actor_gradient(mdp, theta, critic, visitation):
    """Σ_s d(s) Σ_a π(a|s) Σ_s' P(s'|s,a) ∇log π(a|s) Â,  Â = r + γV(s′) − V(s) (td_residuals)."""
    logp = F.log_softmax(theta, -1)
    pi = logp.exp().detach()
    s, a, s_next = torch.meshgrid(torch.arange(3), torch.arange(2), torch.arange(3), indexing="ij")
    s, a, s_next = s.flatten(), a.flatten(), s_next.flatten()  # all 18 transitions
    weight = visitation[s] * pi[s, a] * mdp.P[s, a, s_next]
    advantage = td_residuals(mdp.R[s, a], critic[s], gamma=mdp.gamma, next_values=critic[s_next])
    (grad,) = torch.autograd.grad((weight * score_function_surrogate(logp[s, a], advantage)).sum(), theta)
    return grad


@formula("AC-1")
def test_actor_gradient_with_the_true_critic_is_the_policy_gradient(small_mdp):
    theta = THETA.clone().requires_grad_(True)
    pi, _, V, _, visitation = small_mdp.solve(theta, START)
    (exact,) = torch.autograd.grad(START @ V, theta)
    grad = expected_actor_gradient(small_mdp, theta, V.detach(), visitation.detach())
    torch.testing.assert_close(grad, exact, rtol=1e-9, atol=1e-12)
    # with a critic that is off by a state-dependent error the actor gradient is biased
    wrong = V.detach() + torch.tensor([1.0, -1.0, 0.5], dtype=f64)
    assert float((expected_actor_gradient(small_mdp, theta, wrong, visitation.detach()) - exact).abs().max()) > 0.05


@formula("AC-1")
def test_critic_regressed_to_one_step_targets_learns_v_and_the_actor_follows(small_mdp):
    P, R, GAMMA = small_mdp.P, small_mdp.R, small_mdp.gamma
    theta = THETA.clone().requires_grad_(True)
    pi, _, V_true, _, visitation = small_mdp.solve(theta, START)
    pi, V_true, visitation = pi.detach(), V_true.detach(), visitation.detach()
    # A fixed batch of transitions from the on-policy state distribution.
    g = torch.Generator().manual_seed(0)
    n = 10_000
    s = torch.multinomial(visitation / visitation.sum(), n, replacement=True, generator=g)
    a = torch.multinomial(pi[s], 1, generator=g).squeeze(1)
    s_next = torch.multinomial(P[s, a], 1, generator=g).squeeze(1)
    r = R[s, a]
    critic = torch.zeros(3, dtype=f64, requires_grad=True)
    optimizer = torch.optim.SGD([critic], lr=2.0)  # 2 × ½(V − y)²: the step of a unit squared error
    for _ in range(80):  # regress V(s) to the target r + γV(s′), the target recomputed each round
        with torch.no_grad():
            target = r + GAMMA * critic[s_next]
        for _ in range(4):
            optimizer.zero_grad()
            value_loss(critic[s], target).mean().backward()
            optimizer.step()
    # Independent check: the fixed point is the value of the batch's own empirical MDP,
    # V = r̄ + γ M V with r̄(s) the mean reward and M(s, s') the transition frequencies from s.
    counts = torch.zeros(3, 3, dtype=f64).index_put_((s, s_next), torch.ones(n, dtype=f64), accumulate=True)
    visits = counts.sum(1)
    mean_reward = torch.zeros(3, dtype=f64).index_add_(0, s, r) / visits
    empirical = torch.linalg.solve(torch.eye(3, dtype=f64) - GAMMA * counts / visits[:, None], mean_reward)
    torch.testing.assert_close(critic.detach(), empirical, atol=2e-3, rtol=0)
    # ... which is V^π up to the sampling error of 10000 transitions
    torch.testing.assert_close(critic.detach(), V_true, atol=0.3, rtol=0)
    (exact,) = torch.autograd.grad(START @ small_mdp.solve(theta)[2], theta)
    grad = expected_actor_gradient(small_mdp, theta, critic.detach(), visitation)
    assert float((grad - exact).abs().max()) < 0.05 * float(exact.abs().max())
    # the actor step improves J
    with torch.no_grad():
        improved = THETA + 0.1 * grad
        assert float(START @ small_mdp.solve(improved)[2]) > float(START @ V_true)
