"""Shared test settings.

- `device` fixture: the device tests build tensors on. CPU by default; set
  `PROXIMAL_TEST_DEVICE=cuda` to run the same tests on a GPU.
- `@pytest.mark.formula("ID")` must name an ID of the catalog (checked at collection).
- `@pytest.mark.gpu` tests are skipped when CUDA is absent.
- `one_torch_thread` fixture: one torch thread during a test, the previous count restored
  after it (for modules that train or step envs: `pytestmark = pytest.mark.usefixtures(...)`).
- `small_mdp` fixture: a three-state, two-action MDP solved exactly (the policy-gradient
  theorem, PG-7, and actor–critic, AC-1, are both checked on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from core.catalog import FORMULAS

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame never needs a screen in tests
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # small tensors: one thread is fastest, and CI machines are small


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("formula"):
            if len(mark.args) != 1 or mark.args[0] not in FORMULAS:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.formula needs one catalog ID, got {mark.args!r}"
                )
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture
def one_torch_thread():
    """These tests move small tensors; a second intra-op thread only adds synchronisation,
    which costs whole milliseconds per op when the machine's cores are busy elsewhere. A test
    that trains may change the count (`cpu_threads`): it is put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("PROXIMAL_TEST_DEVICE", "cpu"))


@dataclass(frozen=True)
class SmallMDP:
    """P[s, a, s'] transition probabilities, R[s, a] rewards, discount γ; float64 throughout."""

    P: torch.Tensor
    R: torch.Tensor
    gamma: float

    def solve(self, theta: torch.Tensor, start: torch.Tensor | None = None):
        """π = softmax(θ) (S, A); P_π (S, S); V^π (S,) and Q^π (S, A) by a linear solve; and, given a
        start distribution, the discounted visitation d(s) = Σ_t γ^t P(s_t = s) (else None)."""
        eye = torch.eye(self.P.shape[0], dtype=self.P.dtype)
        pi = F.softmax(theta, -1)
        P_pi = torch.einsum("sa,sat->st", pi, self.P)
        V = torch.linalg.solve(eye - self.gamma * P_pi, (pi * self.R).sum(-1))
        Q = self.R + self.gamma * torch.einsum("sat,t->sa", self.P, V)
        visitation = None if start is None else torch.linalg.solve((eye - self.gamma * P_pi).T, start)
        return pi, P_pi, V, Q, visitation


@pytest.fixture
def small_mdp() -> SmallMDP:
    P = torch.tensor([  # P[s, a, s']
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]],
        [[0.3, 0.4, 0.3], [0.0, 0.2, 0.8]],
        [[0.5, 0.0, 0.5], [0.9, 0.1, 0.0]],
    ], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0], [0.0, 0.5], [-1.0, 2.0]], dtype=torch.float64)
    return SmallMDP(P, R, gamma=0.9)
