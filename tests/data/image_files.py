"""Real image files and class-folder trees for the data tests (imported by name: tests/data is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def colour(label: int) -> tuple[int, int, int]:
    return ((label * 97) % 256, (label * 57 + 40) % 256, (label * 13 + 90) % 256)


def write_rgb(path: Path, colour: tuple[int, int, int] = (200, 30, 60), size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def make_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """One class folder per key with that many real images."""
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_rgb(root / name / f"img{i:03d}{ext}", colour(label))
    return root


def write_truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # noise: the JPEG stream is long
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
