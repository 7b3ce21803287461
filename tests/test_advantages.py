"""Advantage estimators against plain loops, hand cases and their defining identities."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.advantages import gae
from core.group import group_advantages
from core.returns import (
    discounted_returns,
    gae_weighted_sum,
    k_step_advantages,
    lambda_returns,
    td_residuals,
)

formula = pytest.mark.formula


def naive_gae(rewards, values, next_values, terms, truncs, gamma, lam):
    """Σ_l (γλ)^l δ_{t+l} up to and including the step where the episode ends (plain lists)."""
    T = len(rewards)
    deltas = [rewards[t] + gamma * (1 - terms[t]) * next_values[t] - values[t] for t in range(T)]
    out = []
    for t in range(T):
        total, weight = 0.0, 1.0
        for j in range(t, T):
            total += weight * deltas[j]
            if terms[j] or truncs[j]:
                break
            weight *= gamma * lam
        out.append(total)
    return out


def random_episode_batch(seed: int, n: int = 5, T: int = 12, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, T, generator=g)
    values = torch.randn(n, T, generator=g)
    # next_values continue the value sequence inside an episode, as a real rollout's would
    next_values = torch.cat([values[:, 1:], torch.randn(n, 1, generator=g)], dim=1)
    ends = torch.rand(n, T, generator=g)
    terms = (ends < 0.12).float()
    truncs = ((ends >= 0.12) & (ends < 0.22)).float()
    # at an episode end next_values is the final observation's value, not the next episode's
    final_values = torch.randn(n, T, generator=g)
    done = (terms + truncs) > 0
    next_values = torch.where(done, final_values, next_values)
    return [x.to(device) for x in (rewards, values, next_values, terms, truncs)]


@formula("AD-2")
def test_td_residual_hand_case(device):
    rewards = torch.tensor([1.0, 0.5, 2.0], device=device)
    values = torch.tensor([0.2, 0.4, 0.6], device=device)
    next_values = torch.tensor([0.4, 0.6, 3.0], device=device)
    terms = torch.tensor([0.0, 0.0, 1.0], device=device)
    delta = td_residuals(rewards, values, gamma=0.9, next_values=next_values, terminations=terms)
    expected = [1.0 + 0.9 * 0.4 - 0.2, 0.5 + 0.9 * 0.6 - 0.4, 2.0 - 0.6]  # no bootstrap at the end
    assert delta.tolist() == pytest.approx(expected)


@formula("AD-3")
@pytest.mark.parametrize("k", [1, 2, 3, 7, 50])
def test_k_step_reward_form_equals_delta_sum(k, device):
    rewards, values, next_values, _, _ = random_episode_batch(1, device=device)
    next_values = torch.cat([values[:, 1:], next_values[:, -1:]], dim=1)  # one episode, no ends
    gamma = 0.93
    got = k_step_advantages(rewards, values, next_values, gamma=gamma, k=k)
    delta = td_residuals(rewards, values, gamma=gamma, next_values=next_values)
    T = rewards.shape[-1]
    for t in range(T):
        expected = sum(gamma**l * delta[:, t + l] for l in range(min(k, T - t)))
        torch.testing.assert_close(got[:, t], expected, rtol=1e-5, atol=1e-5)


@formula("AD-4")
@formula("AD-5")
@pytest.mark.parametrize("seed", range(6))
def test_gae_recursion_equals_naive_loop(seed, device):
    g = torch.Generator().manual_seed(100 + seed)
    gamma, lam = float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g))
    rewards, values, next_values, terms, truncs = random_episode_batch(seed, device=device)
    got = gae(rewards, values, gamma=gamma, gae_lambda=lam, next_values=next_values,
              terminations=terms, truncations=truncs)
    for i in range(rewards.shape[0]):
        expected = naive_gae(*(x[i].tolist() for x in (rewards, values, next_values, terms, truncs)), gamma, lam)
        assert got[i].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@formula("AD-4")
@settings(max_examples=40, deadline=None)
@given(
    gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), T=st.integers(1, 9),
    seed=st.integers(0, 10_000), terminal=st.booleans(),
)
def test_gae_recursion_equals_weighted_sum_of_k_step(gamma, lam, T, seed, terminal):
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(3, T, generator=g), torch.randn(3, T, generator=g)
    final = torch.randn(3, 1, generator=g)
    next_values = torch.cat([values[:, 1:], final], dim=1)
    terms = torch.zeros(3, T)
    if terminal:
        terms[:, -1] = 1.0
    recursion = gae(rewards, values, gamma=gamma, gae_lambda=lam, next_values=next_values, terminations=terms)
    weighted = gae_weighted_sum(rewards, values, next_values, gamma=gamma, gae_lambda=lam, terminal_at_end=terminal)
    torch.testing.assert_close(recursion, weighted, rtol=1e-4, atol=1e-4)


@formula("AD-4")
def test_gae_limits_lambda_zero_and_one(device):
    rewards, values, next_values, terms, truncs = random_episode_batch(7, device=device)
    kwargs = dict(next_values=next_values, terminations=terms, truncations=truncs)
    gamma = 0.97
    # λ = 0: one-step TD residual
    torch.testing.assert_close(
        gae(rewards, values, gamma=gamma, gae_lambda=0.0, **kwargs),
        td_residuals(rewards, values, gamma=gamma, **kwargs),
    )
    # λ = 1: discounted return to the episode end (bootstrapped at truncations/window end) − V
    one = gae(rewards, values, gamma=gamma, gae_lambda=1.0, **kwargs)
    dones = ((terms + truncs) > 0).float()
    bootstrap_each = next_values * (1 - terms)  # the value after an episode end (0 if terminal)
    for i in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            ret, disc = 0.0, 1.0
            for j in range(t, rewards.shape[1]):
                ret += disc * float(rewards[i, j])
                disc *= gamma
                if dones[i, j] or j == rewards.shape[1] - 1:
                    ret += disc * float(bootstrap_each[i, j])
                    break
            assert float(one[i, t]) == pytest.approx(ret - float(values[i, t]), rel=1e-4, abs=1e-4)


@formula("AD-5")
def test_truncation_bootstraps_and_termination_does_not(device):
    """Same rewards, same values: the only difference is how the episode ended."""
    rewards = torch.tensor([1.0, 1.0], device=device)
    values = torch.tensor([0.0, 0.0], device=device)
    next_values = torch.tensor([0.0, 10.0], device=device)  # V(final observation) = 10
    ended = torch.tensor([0.0, 1.0], device=device)
    zero = torch.zeros(2, device=device)
    terminated = gae(rewards, values, gamma=0.5, gae_lambda=1.0, next_values=next_values,
                     terminations=ended, truncations=zero)
    truncated = gae(rewards, values, gamma=0.5, gae_lambda=1.0, next_values=next_values,
                    terminations=zero, truncations=ended)
    assert terminated.tolist() == pytest.approx([1.5, 1.0])
    assert truncated.tolist() == pytest.approx([1.0 + 0.5 * 6.0, 6.0])


@formula("AD-5")
def test_no_advantage_leaks_across_episodes(device):
    """Changing anything after an episode end leaves the advantages before it unchanged."""
    rewards, values, next_values, _, _ = random_episode_batch(3, n=1, T=10, device=device)
    terms = torch.zeros_like(rewards)
    terms[0, 4] = 1.0
    before = gae(rewards, values, gamma=0.99, gae_lambda=0.95, next_values=next_values, terminations=terms)
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[0, 5:] += 100.0
    values2[0, 5:] -= 50.0
    after = gae(rewards2, values2, gamma=0.99, gae_lambda=0.95, next_values=next_values, terminations=terms)
    torch.testing.assert_close(before[0, :5], after[0, :5])


@formula("AD-5")
def test_token_mask_form_matches_explicit_flags(device):
    rewards = torch.tensor([[0.1, 0.2, 1.0, 0.0], [0.3, 2.0, 0.0, 0.0]], device=device)
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0], [0.2, 0.1, 9.0, 9.0]], device=device)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], device=device)
    got = gae(rewards, values, gamma=1.0, gae_lambda=0.95, mask=mask)
    for i, length in enumerate([3, 2]):
        r, v = rewards[i, :length].tolist(), values[i, :length].tolist()
        nv = v[1:] + [0.0]
        terms = [0] * (length - 1) + [1]
        expected = naive_gae(r, v, nv, terms, [0] * length, 1.0, 0.95)
        assert got[i, :length].tolist() == pytest.approx(expected, rel=1e-5)
        assert got[i, length:].abs().sum() == 0  # padding carries no advantage


@formula("AD-7")
@pytest.mark.parametrize("seed", range(4))
def test_lambda_return_recursion_equals_gae_plus_values(seed, device):
    rewards, values, next_values, terms, truncs = random_episode_batch(20 + seed, device=device)
    kwargs = dict(gamma=0.95, gae_lambda=0.8, next_values=next_values, terminations=terms, truncations=truncs)
    torch.testing.assert_close(lambda_returns(rewards, values, **kwargs), gae(rewards, values, **kwargs) + values,
                               rtol=1e-5, atol=1e-5)


@formula("AD-1")
def test_expected_td_residual_with_true_values_is_the_advantage():
    """On a 2-state MDP with known V: E[δ | s, a] = Q(s, a) − V(s) = A(s, a)."""
    gamma = 0.9
    # P[s, a, s'] and R[s, a]; policy π[s, a]
    P = torch.tensor([[[0.8, 0.2], [0.1, 0.9]], [[0.5, 0.5], [0.3, 0.7]]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
    pi = torch.tensor([[0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    R_pi = (pi * R).sum(1)
    V = torch.linalg.solve(torch.eye(2, dtype=torch.float64) - gamma * P_pi, R_pi)
    Q = R + gamma * torch.einsum("sat,t->sa", P, V)
    for s in range(2):
        for a in range(2):
            # expectation of δ over s' by enumeration, using the library's td_residuals
            deltas = td_residuals(torch.full((2,), float(R[s, a]), dtype=torch.float64),
                                  torch.full((2,), float(V[s]), dtype=torch.float64),
                                  gamma=gamma, next_values=V.clone())
            expected_delta = float((P[s, a] * deltas).sum())
            assert expected_delta == pytest.approx(float(Q[s, a] - V[s]), abs=1e-12)
    # and A has zero mean under π: E_a[A(s, a)] = 0
    assert ((pi * (Q - V[:, None])).sum(1)).abs().max() < 1e-12


@formula("AD-6")
def test_k_step_bias_falls_and_variance_grows_with_k():
    """A chain with noisy rewards and a critic that is off by +1 everywhere."""
    g = torch.Generator().manual_seed(0)
    T, n, gamma = 20, 20_000, 0.9
    true_values = torch.zeros(T)  # rewards have mean 0, so V* = 0 everywhere
    wrong = true_values + 1.0
    rewards = torch.randn(n, T, generator=g)
    values = wrong.expand(n, T)
    next_values = wrong.expand(n, T)
    biases, variances = [], []
    for k in (1, 2, 4, 8):
        q_k = k_step_advantages(rewards, values, next_values, gamma=gamma, k=k) + values  # Q^(k) estimate at t=0
        biases.append(float(q_k[:, 0].mean() - 0.0))
        variances.append(float(q_k[:, 0].var()))
    # bias of Q^(k) is γ^k · (V error) = γ^k
    assert biases == pytest.approx([gamma**k for k in (1, 2, 4, 8)], abs=0.03)
    # variance is Σ_{i<k} γ^{2i} (unit-variance rewards): strictly growing with k
    expected_var = [sum(gamma ** (2 * i) for i in range(k)) for k in (1, 2, 4, 8)]
    assert variances == pytest.approx(expected_var, rel=0.05)
    assert all(a < b for a, b in zip(variances, variances[1:]))


@formula("PG-8")
def test_discounted_returns_plain_loop(device):
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    dones = torch.tensor([0.0, 1.0, 0.0, 0.0], device=device)
    got = discounted_returns(rewards, gamma=0.5, dones=dones, bootstrap=torch.tensor(8.0, device=device))
    assert got.tolist() == pytest.approx([1 + 0.5 * 2, 2, 3 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8])


@formula("GR-1")
def test_grpo_group_advantage_hand_case(device):
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], device=device)
    adv = group_advantages(r)
    std = math.sqrt(1.0 / 3.0)  # unbiased std of [1, 0, 0, 1]
    assert adv[0].tolist() == pytest.approx([x / (std + 1e-4) for x in (0.5, -0.5, -0.5, 0.5)], rel=1e-5)
    assert adv[1].abs().max() == 0  # an all-equal group carries no signal


@formula("DR-1")
def test_dr_grpo_advantage_has_no_std(device):
    r = torch.tensor([3.0, 1.0, 2.0], device=device)
    assert group_advantages(r, scale_by_std=False).tolist() == pytest.approx([1.0, -1.0, 0.0])
    # scaling every reward scales Dr. GRPO's advantage, but not GRPO's
    assert group_advantages(10 * r, scale_by_std=False).tolist() == pytest.approx([10.0, -10.0, 0.0])
    torch.testing.assert_close(group_advantages(10 * r, eps=0.0), group_advantages(r, eps=0.0))


def test_bad_inputs_name_the_problem(device):
    r = torch.zeros(3, device=device)
    with pytest.raises(ValueError, match="gamma"):
        gae(r, r, gamma=1.5, gae_lambda=0.9)
    with pytest.raises(ValueError, match="gae_lambda"):
        gae(r, r, gamma=0.9, gae_lambda=-0.1)
    with pytest.raises(ValueError, match="values"):
        gae(r, torch.zeros(4, device=device), gamma=0.9, gae_lambda=0.9)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        gae(torch.tensor([0.0, float("nan"), 0.0], device=device), r, gamma=0.9, gae_lambda=0.9)
    with pytest.raises(ValueError, match="group size 1"):
        group_advantages(torch.ones(4, 1, device=device))


@formula("DA-2")
def test_informative_groups_matches_a_loop(device):
    from core.group import informative_groups

    g = torch.Generator().manual_seed(3)
    rewards = (torch.rand(200, 4, generator=g) < 0.5).float().to(device)  # 0/1 verifier, G = 4
    keep = informative_groups(rewards)
    for row, kept in zip(rewards.tolist(), keep.tolist()):
        n_correct = sum(row)
        assert kept == (0 < n_correct < 4)
    assert 0 < keep.sum() < 200  # both kinds occur at this seed
    # what it keeps never has an all-zero GRPO advantage; what it drops always does
    adv = group_advantages(rewards)
    assert (adv[keep].abs().sum(dim=1) > 0).all() and (adv[~keep] == 0).all()
    with pytest.raises(ValueError, match="group size 1"):
        informative_groups(rewards[:, :1])
    with pytest.raises(ValueError, match="at least one group"):
        informative_groups(rewards[:0])


@formula("DA-4")
def test_overlong_penalty_pieces_and_continuity(device):
    from core.group import overlong_penalty

    max_length, cache = 20, 4  # the ramp covers lengths 17..20
    lengths = torch.arange(0, 26, device=device)
    penalty = overlong_penalty(lengths, max_length, cache)
    for n, p in zip(lengths.tolist(), penalty.tolist()):
        if n <= 16:
            assert p == 0.0
        elif n <= 20:
            assert p == pytest.approx((16 - n) / 4)
        else:
            assert p == -1.0
    # continuous at both joints: the ramp reaches 0 at L_max − L_cache and −1 at L_max
    eps = 1e-6
    at = torch.tensor([16.0, 16.0 + eps, 20.0, 20.0 + eps], dtype=torch.float64, device=device)
    values = overlong_penalty(at, max_length, cache).tolist()
    assert values[0] == pytest.approx(values[1], abs=1e-5) and values[2] == pytest.approx(values[3], abs=1e-5)
    assert values[2] == -1.0
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(lengths, max_length, 0)
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(lengths, max_length, 21)
