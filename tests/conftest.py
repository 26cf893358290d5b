"""Shared fixtures: small real image folders written by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def hymenoptera() -> Path:
    """The real ants/bees photos beside the checkout; tests using it skip when it is absent."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is not present")
    return HYMENOPTERA
