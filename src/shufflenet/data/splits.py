"""Seeded stratified train/val splits, saved as JSON (paths relative to the data folder) so reruns match."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from shufflenet.data.folders import _class_dirs, _image_names_under
from shufflenet.data.images import Sample
from shufflenet.fileio import write_text_atomic

SPLIT_FORMAT = "shufflenet-split"
SPLIT_VERSION = 1
LAYOUT_TRAIN_VAL = "train/val"
LAYOUT_SPLIT = "split"


def stratified_split(
    samples: Sequence[Sample], class_names: Sequence[str], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded per-class split; every class with >= 2 images gets >= 1 validation and >= 1 training image."""
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be between 0 and 1 (exclusive), got {val_split}")
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(class_names):
        paths = sorted(p for p, lab in samples if lab == label)
        if len(paths) < 2:
            raise ValueError(
                f"class {name!r} has {len(paths)} readable image(s), so it gets no validation image; "
                f"a split needs at least 2 per class: add images or use the train/ + val/ layout"
            )
        rng.shuffle(paths)
        n_val = min(max(round(len(paths) * val_split), 1), len(paths) - 1)
        val.extend((p, label) for p in sorted(paths[:n_val]))
        train.extend((p, label) for p in sorted(paths[n_val:]))
    return train, val


def write_split(
    path: str | Path,
    data_dir: str | Path,
    class_names: Sequence[str],
    train: Sequence[Sample],
    val: Sequence[Sample],
    seed: int | None = None,
    val_split: float | None = None,
    layout: str = LAYOUT_SPLIT,
) -> Path:
    """Save a split as JSON: class names and, per subset and class, paths relative to ``data_dir`` (atomic)."""
    path, data_dir = Path(path), Path(data_dir)

    prefix = str(data_dir) + os.sep

    def relative(p: Path) -> str:
        text = str(p)
        # A prefix cut, not os.path.relpath: that normalises both paths, per file of a million.
        rel = text[len(prefix) :] if text.startswith(prefix) else os.path.relpath(text, data_dir)
        return rel.replace(os.sep, "/")

    def subset(samples: Sequence[Sample]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in class_names}
        for p, label in samples:
            out[class_names[label]].append(relative(p))
        return out

    data = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "layout": layout,
        "root": str(data_dir.resolve()),
        "seed": seed,
        "val_split": val_split,
        "class_names": list(class_names),
        "train": subset(train),
        "val": subset(val),
    }
    return write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_split(
    path: str | Path, data_dir: str | Path, found: set[str] | None = None
) -> tuple[list[str], list[Sample], list[Sample]]:
    """Load a split written by :func:`write_split`; errors name missing files and what to do.

    ``found`` (from :func:`relative_image_names`) is the tree's files; by default it is listed here.
    """
    path, data_dir = Path(path), Path(data_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"split file {path} cannot be read ({exc}); delete it to make a new split") from None
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path} is not a shufflenet split file (format != {SPLIT_FORMAT!r}); delete or move it")
    try:
        class_names = [str(c) for c in data["class_names"]]
        subsets = {key: data[key] for key in ("train", "val")}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"split file {path} lacks key {exc}; delete it to make a new split") from None
    index = {name: i for i, name in enumerate(class_names)}
    found = relative_image_names(data_dir) if found is None else found
    result: dict[str, list[Sample]] = {}
    missing: list[str] = []
    for key, per_class in subsets.items():
        samples: list[Sample] = []
        for name, rels in per_class.items():
            if name not in index:
                raise ValueError(f"split file {path}: class {name!r} in {key!r} is not in class_names")
            for rel in rels:
                if rel not in found:
                    missing.append(rel)
                samples.append((data_dir / rel, index[name]))
        result[key] = samples
    if missing:
        raise ValueError(
            f"split file {path} references {len(missing)} file(s) missing under {data_dir} "
            f"(e.g. {', '.join(missing[:3])}); restore them, or delete the split file to make a new split"
        )
    return class_names, result["train"], result["val"]


def relative_image_names(data_dir: Path) -> set[str]:
    """The image files of the class folders below ``data_dir``, as posix paths relative to it (one walk)."""
    prefix = str(data_dir) + os.sep
    return {p[len(prefix) :].replace(os.sep, "/") for d in _class_dirs(data_dir) for p in _image_names_under(d)}
