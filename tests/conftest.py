"""Shared fixtures: small real image folders written by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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


def rerun_in_fresh_interpreter(request: pytest.FixtureRequest) -> bool:
    """Run this test in a new Python process; True means "you are that process, run the body".

    Signal tests need it: a native runtime loaded by an earlier test in the same process (OpenVINO's) takes
    over SIGTERM delivery, so the test would measure that library instead of our handler.
    """
    node = request.node.nodeid
    if os.environ.get("SHUFFLENET_FRESH_TEST") == node:
        return True
    env = {**os.environ, "SHUFFLENET_FRESH_TEST": node}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", node]
    proc = subprocess.run(command, cwd=request.config.rootpath, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{node} failed in a fresh interpreter:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return False


def signal_during_training(monkeypatch: pytest.MonkeyPatch, at_image: int, signum: int) -> Callable:
    """Make the training transform send ``signum`` to this process at its ``at_image``-th image (mid-epoch).

    Returns the real ``engine.train_transform`` so the test can put it back before resuming.
    """
    from shufflenet import engine

    real = engine.train_transform
    calls = {"n": 0}

    def interrupting(*args: object, **kwargs: object) -> Callable:
        transform = real(*args, **kwargs)

        def apply(image: object) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == at_image:
                os.kill(os.getpid(), signum)
            return transform(image)

        return apply

    monkeypatch.setattr(engine, "train_transform", interrupting)
    return real
