"""Shared fixtures: small real image folders written by the tests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Small, fast training options (x0_5 at 32 px).
TINY = {"model": "shufflenet_v2_x0_5", "img_size": 32, "batch_size": 8, "lr": 1e-3, "workers": 0}
COLORS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}
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


def write_images(root: Path, per_class: int, seed: int = 0) -> None:
    """JPEGs whose colour tells the class (learnable), with noise (not trivially so)."""
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((36, 40, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """train/ + val/ class folders (the seed's layout), with a few files that are not usable images."""
    root = tmp_path / "data"
    write_images(root / "train", 12)
    write_images(root / "val", 4, seed=1)
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "notes.png").write_text("not a picture")
    (root / "train" / "dog" / "readme.txt").write_text("ignored")
    Image.new("L", (40, 36), 90).save(root / "train" / "cat" / "gray.png")
    Image.new("RGBA", (40, 36), (200, 40, 40, 128)).save(root / "train" / "cat" / "alpha.png")
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (metrics.csv)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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

    Returns the real ``train_transform`` so the test can put it back (in ``shufflenet.training.loaders``)
    before resuming.
    """
    from shufflenet.training import loaders

    real = loaders.train_transform
    calls = {"n": 0}

    def interrupting(*args: object, **kwargs: object) -> Callable:
        transform = real(*args, **kwargs)

        def apply(image: object) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == at_image:
                os.kill(os.getpid(), signum)
            return transform(image)

        return apply

    monkeypatch.setattr(loaders, "train_transform", interrupting)
    return real
