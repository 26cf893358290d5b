"""The bundled demo data: scikit-learn's real handwritten digit scans written as PNG class folders (no download)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from shufflenet.data.splits import LAYOUT_SPLIT, LAYOUT_TRAIN_VAL, stratified_split

logger = logging.getLogger("shufflenet")


_DIGITS_MARKER = ".shufflenet-digits.json"


def make_digits_dataset(root: str | Path, image_size: int = 32, layout: str = LAYOUT_SPLIT) -> Path:
    """Write scikit-learn's 1,797 real 8x8 handwritten digit scans as PNGs in class folders ``0``..``9``.

    ``layout="split"`` writes ``root/<digit>/``; ``layout="train/val"`` writes ``root/train/<digit>/`` and
    ``root/val/<digit>/`` (seed-0 stratified 80/20). Upscaled to ``image_size`` (bilinear), grayscale PNG.
    Skips writing when ``root`` already holds the same complete dataset. No download: the data ships with
    scikit-learn.
    """
    from sklearn.datasets import load_digits

    if layout not in (LAYOUT_SPLIT, LAYOUT_TRAIN_VAL):
        raise ValueError(f"layout must be {LAYOUT_SPLIT!r} or {LAYOUT_TRAIN_VAL!r}, got {layout!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the scans are 8x8), got {image_size}")
    root = Path(root)
    marker = root / _DIGITS_MARKER
    spec = {"source": "sklearn.datasets.load_digits", "image_size": image_size, "layout": layout}

    digits = load_digits()
    images: np.ndarray = digits.images  # (1797, 8, 8) floats in 0..16
    labels = [int(t) for t in digits.target]
    rel_paths = _digits_paths(labels, layout)
    spec["count"] = len(rel_paths)

    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing == spec and all((root / rel).is_file() for rel in rel_paths):
            logger.debug("digits dataset already complete in %s", root)
            return root
        if isinstance(existing, dict) and existing.get("layout") != layout:
            raise ValueError(
                f"{root} already holds the digits dataset in layout {existing.get('layout')!r}; "
                f"use another folder for layout {layout!r} or delete {root}"
            )
    elif root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise ValueError(f"{root} exists and is not a digits dataset folder; pick an empty or new folder")

    pixels = np.clip(images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    for rel, scan in zip(rel_paths, pixels, strict=True):
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(scan)
        if image_size != 8:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        img.save(out, format="PNG")
    marker.write_text(json.dumps(spec, indent=1) + "\n")  # written last: its presence means complete
    logger.info("wrote %d digit images (%dx%d, layout %s) to %s", len(rel_paths), image_size, image_size, layout, root)
    return root


def _digits_paths(labels: Sequence[int], layout: str) -> list[str]:
    names = [f"{label}/{i:04d}.png" for i, label in enumerate(labels)]
    if layout == LAYOUT_SPLIT:
        return names
    samples = [(Path(n), label) for n, label in zip(names, labels, strict=True)]
    _, val = stratified_split(samples, [str(d) for d in range(10)], 0.2, seed=0)
    val_names = {p.as_posix() for p, _ in val}
    return [("val/" if n in val_names else "train/") + n for n in names]
