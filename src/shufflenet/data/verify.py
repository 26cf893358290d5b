"""``shufflenet verify-data``: decode every image of a tree once, in parallel processes, and list the bad ones.

Training does not need this (it lists files only and replaces a bad file when it meets it); it is for those
who want a clean tree before a long run.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shufflenet.data.folders import _check_dir, _images_under
from shufflenet.data.images import BadImageError, load_image


@dataclass
class VerifyReport:
    """What a check of a tree found: how many images, which could not be decoded and why, how long it took."""

    root: Path
    images: int
    bad: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1


def _reason(path: Path) -> str | None:
    try:
        load_image(path)
    except BadImageError as exc:
        return exc.reason
    return None


def verify_tree(root: str | Path, workers: int | None = None) -> VerifyReport:
    """Decode every image file below ``root`` once (``workers`` processes; default one per core)."""
    root = Path(root)
    _check_dir(root)
    started = time.perf_counter()
    paths = _images_under(root)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 64:
        reasons = [_reason(p) for p in paths]
    else:
        # Processes, not threads: converting and EXIF handling hold the GIL even where the decoder does not.
        chunk = max(1, min(256, len(paths) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(_reason, paths, chunksize=chunk))
    bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    return VerifyReport(root, len(paths), bad, time.perf_counter() - started, workers)
