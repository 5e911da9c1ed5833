"""Fixtures shared by every test: a fixed seed per test and the tiny config."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_cfg as _tiny_cfg

# Every test model is tiny: extra threads only add synchronisation on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Seed torch per test (order-independent results) and restore the default dtype after it."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg(**overrides)`` -> a validated tiny SelmemConfig."""
    return _tiny_cfg
