"""Shared test settings.

- `device` fixture: the device tests build tensors on. CPU by default; set
  `PROXIMAL_TEST_DEVICE=cuda` to run the same tests on a GPU.
- `@pytest.mark.formula("ID")` must name an ID of the catalog (checked at collection).
- `@pytest.mark.gpu` tests are skipped when CUDA is absent.
"""

from __future__ import annotations

import os

import pytest
import torch

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
def device() -> torch.device:
    return torch.device(os.environ.get("PROXIMAL_TEST_DEVICE", "cpu"))
