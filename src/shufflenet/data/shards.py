"""WebDataset tar shards of an image folder (``shufflenet shards``): writing them, and their index.

A shard folder holds ``train/shard-NNNNNN.tar`` and ``val/shard-NNNNNN.tar`` in WebDataset's layout (the one
timm and OpenCLIP train from): each sample is ``KEY.jpg`` (or the source's own image format) + ``KEY.cls``
(the class index in ASCII), + ``KEY.txt`` (the source file, relative to the data folder). ``index.json``
says what is inside: classes, counts per split and class, every shard with its sample count, the
preprocessing (``max_size``) and the source folder. The train/val split is the one ``train --data DIR``
makes (:func:`~shufflenet.data.build_datasets`: the same layouts, seed and fraction, or a run's split.json).

Shards are written with the standard library's ``tarfile`` (the format is plain tar; reading needs no extra
package); samples are shuffled (seeded) across shards so that each shard mixes the classes. Every image is
decoded once while writing: unreadable ones are left out and listed in the index.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import statistics
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from shufflenet.data.datasets import build_datasets
from shufflenet.data.images import BadImageError, Sample, load_image
from shufflenet.fileio import check_output_path, write_text_atomic
from shufflenet.transforms import Preprocessing

INDEX_FILE = "index.json"
SHARDS_FORMAT = "shufflenet-shards"
SHARDS_VERSION = 1
SPLITS = ("train", "val")
JPEG_QUALITY = 90  # re-encoded images (--max-size): visually lossless for training at 224 px
_BLOCK = 2048  # images handed to the encoding processes at a time (bounds memory on a million files)


@dataclass(frozen=True)
class Shard:
    """One tar file of a split: its path and how many samples it holds."""

    path: Path
    count: int


@dataclass
class ShardIndex:
    """What ``index.json`` says about a shard folder."""

    root: Path
    class_names: list[str]
    shards: dict[str, list[Shard]]  # per split
    class_counts: dict[str, dict[str, int]]  # per split: class name -> samples
    max_size: int | None = None
    median_short_side: float | None = None  # of the training images as written (recipes size runs from it)
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source file, reason)

    def count(self, split: str) -> int:
        """Samples in ``split``."""
        return sum(shard.count for shard in self.shards[split])


def is_shard_dir(path: str | Path | None) -> bool:
    """True when ``path`` is a folder written by :func:`write_shards` (it has ``index.json``)."""
    return path is not None and (Path(path) / INDEX_FILE).is_file()


def read_index(root: str | Path) -> ShardIndex:
    """The index of a shard folder; errors name the file and what to do."""
    root = Path(root)
    path = root / INDEX_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); rewrite the shards with shufflenet shards") from None
    if not isinstance(data, dict) or data.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{path} is not a shufflenet shard index (format != {SHARDS_FORMAT!r})")
    try:
        shards = {s: [Shard(root / e["name"], int(e["count"])) for e in data["splits"][s]["shards"]] for s in SPLITS}
        class_counts = {s: {k: int(v) for k, v in data["splits"][s]["classes"].items()} for s in SPLITS}
        index = ShardIndex(
            root=root,
            class_names=[str(c) for c in data["class_names"]],
            shards=shards,
            class_counts=class_counts,
            max_size=data["preprocessing"].get("max_size"),
            median_short_side=data.get("median_short_side"),
            source=dict(data.get("source", {})),
            skipped=[(str(p), str(r)) for p, r in data.get("skipped", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} lacks or mangles {exc}; rewrite the shards with shufflenet shards") from None
    missing = [str(s.path) for split in SPLITS for s in index.shards[split] if not s.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists {len(missing)} shard(s) that are missing, e.g. {missing[0]}")
    for split in SPLITS:
        if not index.count(split):
            raise ValueError(f"{path}: the {split} split has no samples; rewrite the shards from more images")
    return index


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``"1000"`` -> (1000 images, None); ``"256MB"`` -> (None, 256 MiB)."""
    text = text.strip().upper()
    try:
        size = (None, int(float(text[:-2]) * 1024**2)) if text.endswith("MB") else (int(text), None)
    except ValueError:
        raise ValueError(f"shard size {text!r}: give a number of images (1000) or of megabytes (256MB)") from None
    if (size[0] or size[1] or 0) < 1:
        raise ValueError(f"shard size {text!r} must be positive")
    return size


def write_shards(
    data_dir: str | Path,
    out: str | Path,
    shard_images: int | None = 1000,
    shard_bytes: int | None = None,
    max_size: int | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    split_file: str | Path | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> ShardIndex:
    """Write ``data_dir``'s train and val images as tar shards + ``index.json`` under ``out``; return the index.

    The split is ``train --data data_dir``'s (``val_split``, ``seed``, or ``split_file``, a run's split.json);
    ``max_size`` re-encodes images whose shorter side is longer (JPEG, quality 90); a shard closes at
    ``shard_images`` images or ``shard_bytes`` bytes. The folder appears whole or not at all.
    """
    out = Path(out)
    check_output_path(out, overwrite, directory=True)
    if max_size is not None and max_size < 16:
        raise ValueError(f"max_size must be >= 16 pixels, got {max_size}")
    pre = Preprocessing.for_size(224)  # unused: only the file lists are taken
    bundle = build_datasets(data_dir, pre, val_split=val_split, seed=seed, split_file=split_file)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shards: dict[str, list[dict[str, Any]]] = {}
        class_counts: dict[str, dict[str, int]] = {}
        skipped: list[tuple[str, str]] = []
        short_sides: list[int] = []
        for split, dataset in (("train", bundle.train), ("val", bundle.val)):
            samples = list(dataset.samples)
            random.Random(seed).shuffle(samples)  # each shard mixes the classes
            written = _write_split(tmp, split, samples, Path(data_dir), (shard_images, shard_bytes), max_size, workers)
            shards[split], counts, bad, sides = written
            class_counts[split] = {name: counts.get(i, 0) for i, name in enumerate(bundle.class_names)}
            skipped += bad
            if split == "train":
                short_sides = sides
        index = {
            "format": SHARDS_FORMAT,
            "version": SHARDS_VERSION,
            "class_names": bundle.class_names,
            "splits": {
                s: {"count": sum(e["count"] for e in shards[s]), "classes": class_counts[s], "shards": shards[s]}
                for s in SPLITS
            },
            "preprocessing": {"max_size": max_size, "jpeg_quality": JPEG_QUALITY if max_size else None},
            "median_short_side": statistics.median(short_sides) if short_sides else None,
            "source": {
                "data": str(Path(data_dir).resolve()),
                "layout": bundle.layout,
                "val_split": val_split if bundle.layout == "split" else None,
                "seed": seed,
                "split_file": str(split_file) if split_file else None,
            },
            "skipped": [list(item) for item in skipped],
        }
        write_text_atomic(tmp / INDEX_FILE, json.dumps(index, indent=1) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_index(out)


def _write_split(
    root: Path,
    split: str,
    samples: Sequence[Sample],
    data_dir: Path,
    limits: tuple[int | None, int | None],
    max_size: int | None,
    workers: int | None,
) -> tuple[list[dict[str, Any]], dict[int, int], list[tuple[str, str]], list[int]]:
    """One split's shards: (shard entries for the index, samples per label, skipped files, short sides)."""
    shard_images, shard_bytes = limits
    entries: list[dict[str, Any]] = []
    counts: dict[int, int] = {}
    skipped: list[tuple[str, str]] = []
    short_sides: list[int] = []
    (root / split).mkdir()
    tar: tarfile.TarFile | None = None
    in_shard = size = 0
    for number, (path, label), encoded in _encoded(samples, max_size, workers):
        if isinstance(encoded, str):
            skipped.append((str(path), encoded))
            continue
        data, ext, short_side = encoded
        full = (shard_images and in_shard >= shard_images) or (shard_bytes and size + len(data) > shard_bytes)
        if tar is None or (full and in_shard):
            if tar is not None:
                tar.close()
            name = f"{split}/shard-{len(entries):06d}.tar"
            entries.append({"name": name, "count": 0})
            # open across samples until full; closed here or after the loop
            tar = tarfile.open(root / name, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            in_shard = size = 0
        key = f"{number:08d}"
        source = os.path.relpath(path, data_dir).replace(os.sep, "/")
        for suffix, payload in ((ext, data), ("cls", str(label).encode()), ("txt", source.encode())):
            _add_member(tar, f"{key}.{suffix}", payload)
        in_shard += 1
        size += len(data) + 3 * 512  # tar headers
        entries[-1]["count"] += 1
        counts[label] = counts.get(label, 0) + 1
        short_sides.append(short_side)
    if tar is not None:
        tar.close()
    return entries, counts, skipped, short_sides


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    # Fixed owner, mode and time: the same images give byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o444, 0
    tar.addfile(info, io.BytesIO(payload))


def _encoded(
    samples: Sequence[Sample], max_size: int | None, workers: int | None
) -> Iterator[tuple[int, Sample, tuple[bytes, str, int] | str]]:
    """(position, sample, (bytes, extension, short side) or the reason it is unreadable), in order."""
    workers = workers or os.cpu_count() or 1
    jobs = [(str(path), max_size) for path, _ in samples]
    if workers == 1 or len(samples) < 64:
        for number, sample in enumerate(samples):
            yield number, sample, _encode(jobs[number])
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(jobs), _BLOCK):
            block = jobs[start : start + _BLOCK]
            for offset, encoded in enumerate(pool.map(_encode, block, chunksize=16)):
                yield start + offset, samples[start + offset], encoded


def _encode(job: tuple[str, int | None]) -> tuple[bytes, str, int] | str:
    """One image as stored in a shard: its own bytes, or a JPEG with the shorter side ``max_size``."""
    path, max_size = job
    try:
        image = load_image(path, draft_size=max_size)  # decoding checks the file; draft keeps >= max_size
    except BadImageError as exc:
        return exc.reason
    short_side = min(image.size)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if max_size is None or (short_side <= max_size and ext in ("jpg", "jpeg")):
        with open(path, "rb") as f:
            return f.read(), "jpg" if ext == "jpeg" else ext, short_side
    scale = min(1.0, max_size / short_side)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), "jpg", min(size)


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing an old one only once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
