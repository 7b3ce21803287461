"""The KL-regularised RLHF objective on an enumerable toy: its closed-form optimum (RM-2) and the
β = 0 limit of its gradient (RM-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.kl import categorical_kl, kl_regularized_objective, kl_regularized_optimum
from core.surrogates import score_function_surrogate

formula = pytest.mark.formula
f64 = torch.float64

D = torch.tensor([0.6, 0.4], dtype=f64)  # two prompts
REWARD = torch.tensor([[1.0, 0.2, 0.5, -0.3], [0.0, 0.8, 0.1, 0.4]], dtype=f64)  # r(x, y)
REF_LOGITS = torch.tensor([[0.5, 1.0, -0.2, 0.3], [0.1, -0.4, 0.6, 0.0]], dtype=f64)  # π_ref


def regularised_objective(logits, beta):
    """Σ_x D(x) (E_{y∼π(·|x)}[r(x, y)] − β KL[π(·|x) ‖ π_ref(·|x)]), exactly."""
    return (D * kl_regularized_objective(logits, REF_LOGITS, REWARD, beta)).sum()


@formula("RM-2")
@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_gradient_ascent_reaches_the_closed_form_optimum(beta):
    # Gradient ascent on the logits, from π uniform; L-BFGS builds its steps from gradients alone and
    # converges in a few dozen of them, where plain steps would need thousands.
    logits = torch.zeros(2, 4, dtype=f64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1.0, max_iter=200, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        optimizer.zero_grad()
        loss = -regularised_objective(logits, beta)
        loss.backward()
        return loss

    optimizer.step(closure)
    learned = F.softmax(logits.detach(), -1)
    # π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β)
    closed_form = kl_regularized_optimum(REF_LOGITS, REWARD, beta).exp()
    torch.testing.assert_close(learned, closed_form, atol=1e-6, rtol=0)
    # the optimum's value is β Σ_x D(x) log Σ_y π_ref(y|x) exp(r(x, y)/β)
    best_value = beta * (D * torch.logsumexp(F.log_softmax(REF_LOGITS, -1) + REWARD / beta, -1)).sum()
    assert float(regularised_objective(closed_form.log(), beta)) == pytest.approx(float(best_value), rel=1e-10)
    # erratum E2: the optimum is not π_ref; the reward decides where it goes, π_ref only anchors it
    ref = F.softmax(REF_LOGITS, -1)
    assert float((D * categorical_kl(closed_form.log(), REF_LOGITS)).sum()) > 0.01
    assert float((D * (closed_form * REWARD).sum(-1)).sum()) > float((D * (ref * REWARD).sum(-1)).sum())


@formula("RM-2")
def test_small_beta_goes_greedy_and_large_beta_stays_at_the_reference():
    ref = F.softmax(REF_LOGITS, -1)
    greedy = kl_regularized_optimum(REF_LOGITS, REWARD, 0.01).exp()
    assert torch.equal(greedy.argmax(-1), REWARD.argmax(-1))
    anchored = kl_regularized_optimum(REF_LOGITS, REWARD, 1e4).exp()
    torch.testing.assert_close(anchored, ref, atol=1e-3, rtol=0)


@formula("RM-4")
def test_with_beta_zero_the_gradient_is_the_reward_only_gradient():
    logits = torch.tensor([[0.3, -0.1, 0.2, 0.0], [-0.5, 0.4, 0.1, 0.2]], dtype=f64, requires_grad=True)
    (with_beta_zero,) = torch.autograd.grad(regularised_objective(logits, 0.0), logits)
    (reward_only,) = torch.autograd.grad((D * (F.softmax(logits, -1) * REWARD).sum(-1)).sum(), logits)
    torch.testing.assert_close(with_beta_zero, reward_only, rtol=0, atol=0)
    # the same vector as the score-function form, E_x E_y[r ∇log π], enumerated
    logp = F.log_softmax(logits, -1)
    weights = D[:, None] * logp.exp().detach()
    (score_form,) = torch.autograd.grad((weights * score_function_surrogate(logp, REWARD)).sum(), logits)
    torch.testing.assert_close(score_form, reward_only, rtol=1e-12, atol=1e-14)
    # with β > 0 the penalty's gradient is added (here the policy is away from π_ref, so it is not zero)
    (with_beta,) = torch.autograd.grad(regularised_objective(logits, 0.5), logits)
    (kl_grad,) = torch.autograd.grad((D * categorical_kl(logits, REF_LOGITS)).sum(), logits)
    torch.testing.assert_close(with_beta, reward_only - 0.5 * kl_grad)
    assert float(kl_grad.abs().max()) > 0.01
