"""Image-folder datasets: scanning, seeded stratified splits, robust decoding, the bundled digits demo data.

Two layouts are understood: ``DIR/train/<class>/…`` + ``DIR/val/<class>/…`` (the seed's), or one
``DIR/<class>/…`` tree that is split into train/val by a seeded, stratified fraction and saved so reruns match.
Every image is decoded to RGB whatever its mode (RGBA, palette, grayscale, CMYK, 16-bit, GIF); files that cannot
be decoded are skipped with one warning, and non-image files are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from shufflenet.fileio import write_text_atomic
from shufflenet.transforms import Preprocessing

logger = logging.getLogger("shufflenet")

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FORMAT = "shufflenet-split"
SPLIT_VERSION = 1
LAYOUT_TRAIN_VAL = "train/val"
LAYOUT_SPLIT = "split"
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)

Sample = tuple[Path, int]


class BadImageError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args``; keep both fields so DataLoader workers can re-raise it.
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | Path) -> bool:
    """True for a non-hidden file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------- decoding


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB; raises :class:`BadImageError` when it cannot.

    ``draft_size`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while both sides stay >= draft_size,
    which is much faster for large photos that are resized anyway.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImageError(path, f"cannot stat file ({exc.strerror or exc})") from None
    if size == 0:
        raise BadImageError(path, "zero-byte file")
    try:
        # Opening from our own file object keeps the decoded pixels valid after the file is closed.
        with open(path, "rb") as f:
            im = Image.open(f)
            if draft_size and im.format == "JPEG":
                im.draft(None, (draft_size, draft_size))
            im.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES stays False)
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # PIL reports truncated/corrupt data with several exception types depending on the codec.
        raise BadImageError(path, f"corrupt or truncated image data ({exc})") from None
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block should not cost the picture
        orientation = 1
    if orientation in range(2, 9):  # camera photos stored sideways
        im = ImageOps.exif_transpose(im)
    try:
        out = _to_rgb(im)
    except (OSError, ValueError) as exc:
        raise BadImageError(path, f"cannot convert mode {im.mode} to RGB ({exc})") from None
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, high bit depths scaled (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(im)).convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit and 32-bit grayscale -> uint8 by scaling the full range (65535 -> 255), not by clipping."""
    array = np.asarray(im)
    if im.mode == "F":
        data = array.astype(np.float64)
        finite = data[np.isfinite(data)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0  # float images are usually in [0, 1]
        return np.clip(np.nan_to_num(data) * scale, 0, 255).round().astype(np.uint8)
    data = array.astype(np.int64)
    # "I;16*" is always 16-bit; "I" is what 16-bit PNG/TIFF become in some Pillow versions; other "I" images
    # are 16-bit data when their values exceed 8 bits.
    sixteen = im.mode.startswith("I;16") or im.format in ("PNG", "TIFF") or data.max(initial=0) > 255
    if sixteen:
        return (np.clip(data, 0, 65535) / 257.0).round().astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def verify_images(samples: Sequence[Sample], workers: int | None = None) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decode each file once; returns (readable samples in input order, [(path, reason)] for the others)."""

    def check(sample: Sample) -> str | None:
        try:
            load_image(sample[0])
        except BadImageError as exc:
            return exc.reason
        return None

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    if len(samples) < 16 or workers <= 1:
        reasons = [check(s) for s in samples]
    else:
        # PIL releases the GIL while decoding, so threads overlap well.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(check, samples))
    good = [s for s, r in zip(samples, reasons, strict=True) if r is None]
    bad = [(s[0], r) for s, r in zip(samples, reasons, strict=True) if r is not None]
    return good, bad


# --------------------------------------------------------------------------------------------- scanning


def _check_dir(root: Path, what: str = "data directory") -> None:
    if not root.exists():
        raise ValueError(f"{what} {root} does not exist; check the path")
    if not root.is_dir():
        raise ValueError(f"{what} {root} is not a directory; pass a folder with one sub-folder per class")


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """Scan a class-per-folder tree; returns ([(path, label)], sorted class names). Errors name what is wrong."""
    root = Path(root)
    _check_dir(root)
    class_dirs = _class_dirs(root)
    if not class_dirs:
        loose = len(_images_under(root))
        hint = f" (found {loose} images directly in it)" if loose else ""
        raise ValueError(
            f"no class folders in {root}{hint}; put the images in one sub-folder per class, e.g. {root}/cats/1.jpg"
        )
    per_class = {d.name: _images_under(d) for d in class_dirs}
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise ValueError(
            f"class folder(s) with no images in {root}: {', '.join(empty)}; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder(s)"
        )
    class_names = sorted(per_class)
    if len(class_names) < 2:
        raise ValueError(
            f"only one class folder ({class_names[0]!r}) in {root}; classification needs at least 2 classes, "
            f"add a folder per class"
        )
    samples = [(path, label) for label, name in enumerate(class_names) for path in per_class[name]]
    return samples, class_names


def list_image_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (searched recursively, sorted) -> image files, for prediction; errors name bad paths."""
    result: list[Path] = []
    seen: set[Path] = set()
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise ValueError(f"{path} does not exist; pass image files or folders of images")
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise ValueError(f"folder {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            found = [path]
        for f in found:
            if f not in seen:
                seen.add(f)
                result.append(f)
    if not result:
        raise ValueError("no image paths given; pass image files or folders of images")
    return result


# --------------------------------------------------------------------------------------------- dataset


class ImageFolderDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (transformed image, label); a file that fails to decode is replaced, not fatal."""

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        draft_size: int | None = None,
    ) -> None:
        self.samples: list[Sample] = [(Path(p), int(label)) for p, label in samples]
        self.class_names: list[str] = list(class_names)
        self.targets: list[int] = [label for _, label in self.samples]
        self.transform = transform
        self.draft_size = draft_size
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own copy)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not self.samples:
            raise IndexError("empty dataset")
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            path, label = self.samples[i]
            try:
                image = load_image(path, draft_size=self.draft_size)
            except BadImageError as exc:
                # A file that passed verification can still change or vanish during training; an epoch
                # must not die for one image.
                self._bad.add(i)
                logger.warning("%s; using another image in its place", exc)
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise RuntimeError(f"none of the {n} images in this dataset can be read (first: {self.samples[0][0]})")

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        counts = dict.fromkeys(self.class_names, 0)
        for label in self.targets:
            counts[self.class_names[label]] += 1
        return counts

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.class_names)} classes)"


@dataclass
class DataBundle:
    """Train and validation datasets built from one data directory, and what was skipped."""

    train: ImageFolderDataset
    val: ImageFolderDataset
    class_names: list[str]
    skipped: list[tuple[Path, str]]
    split_file: Path | None
    layout: str
    root: Path | None = None
    notes: list[str] = field(default_factory=list)


def detect_layout(data_dir: str | Path) -> str:
    """``"train/val"`` when ``data_dir`` has ``train/`` and ``val/`` folders, else ``"split"``."""
    data_dir = Path(data_dir)
    _check_dir(data_dir)
    return LAYOUT_TRAIN_VAL if (data_dir / "train").is_dir() and (data_dir / "val").is_dir() else LAYOUT_SPLIT


def build_datasets(
    data_dir: str | Path,
    preprocessing: Preprocessing,
    val_split: float = 0.2,
    seed: int = 0,
    split_file: str | Path | None = None,
    verify: bool = True,
    draft: bool = False,
) -> DataBundle:
    """Train/val datasets from ``train/`` + ``val/`` folders or a seeded stratified split of one class tree.

    The split (relative paths per subset and class) is written to ``split_file`` when given; an existing
    ``split_file`` is reused for the ``split`` layout so reruns see the same images. Unreadable images are
    skipped with one warning. ``draft=True`` decodes JPEGs at reduced size (>= ``preprocessing.resize_size``).
    """
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    split_path = Path(split_file) if split_file is not None else None
    notes: list[str] = []

    if layout == LAYOUT_TRAIN_VAL:
        train_samples, class_names = scan_image_folder(data_dir / "train")
        val_samples, val_names = scan_image_folder(data_dir / "val")
        if val_names != class_names:
            only_train = sorted(set(class_names) - set(val_names))
            only_val = sorted(set(val_names) - set(class_names))
            raise ValueError(
                f"class folders differ between {data_dir / 'train'} and {data_dir / 'val'}: "
                f"only in train: {only_train or 'none'}; only in val: {only_val or 'none'}; "
                f"make both contain the same class folders"
            )
        skipped: list[tuple[Path, str]] = []
        if verify:
            train_samples, bad_train = verify_images(train_samples)
            val_samples, bad_val = verify_images(val_samples)
            skipped = bad_train + bad_val
        _require_each_class(train_samples, class_names, "training", data_dir / "train")
        _require_each_class(val_samples, class_names, "validation", data_dir / "val")
    else:
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"val_split must be between 0 and 1 (exclusive), got {val_split}")
        if split_path is not None and split_path.exists():
            class_names, train_samples, val_samples = read_split(split_path, data_dir)
            unlisted = _count_unlisted(data_dir, train_samples, val_samples)
            if unlisted:
                notes.append(f"{unlisted} image(s) in {data_dir} are not in {split_path} and are not used")
            notes.append(f"reused the split in {split_path}")
            skipped = []
            if verify:
                train_samples, bad_train = verify_images(train_samples)
                val_samples, bad_val = verify_images(val_samples)
                skipped = bad_train + bad_val
            _require_each_class(val_samples, class_names, "validation", split_path)
            _require_each_class(train_samples, class_names, "training", split_path)
            split_path_out = None  # reused as-is: never rewrite the user's file
        else:
            samples, class_names = scan_image_folder(data_dir)
            skipped = []
            if verify:
                samples, skipped = verify_images(samples)
            train_samples, val_samples = stratified_split(samples, class_names, val_split, seed)
            split_path_out = split_path
        if split_path_out is not None:
            write_split(split_path_out, data_dir, class_names, train_samples, val_samples, seed, val_split, layout)

    if layout == LAYOUT_TRAIN_VAL and split_path is not None:
        write_split(split_path, data_dir, class_names, train_samples, val_samples, seed, None, layout)

    if skipped:
        listing = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        logger.warning("skipped %d unreadable image file(s): %s", len(skipped), listing)
    for note in notes:
        logger.info(note)

    draft_size = preprocessing.resize_size if draft else None
    train = ImageFolderDataset(train_samples, class_names, preprocessing.train_transform(), draft_size=draft_size)
    val = ImageFolderDataset(val_samples, class_names, preprocessing.eval_transform(), draft_size=draft_size)
    return DataBundle(
        train=train,
        val=val,
        class_names=list(class_names),
        skipped=skipped,
        split_file=split_path,
        layout=layout,
        root=data_dir,
        notes=notes,
    )


def _require_each_class(samples: Sequence[Sample], class_names: Sequence[str], subset: str, where: Path) -> None:
    present = {label for _, label in samples}
    missing = [name for i, name in enumerate(class_names) if i not in present]
    if missing:
        raise ValueError(
            f"class(es) with no readable {subset} image: {', '.join(missing)} (in {where}); "
            f"add images for them or remove the class folder(s)"
        )


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

    def subset(samples: Sequence[Sample]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in class_names}
        for p, label in samples:
            out[class_names[label]].append(Path(os.path.relpath(p, data_dir)).as_posix())
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


def read_split(path: str | Path, data_dir: str | Path) -> tuple[list[str], list[Sample], list[Sample]]:
    """Load a split written by :func:`write_split`; errors name missing files and what to do."""
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
    result: dict[str, list[Sample]] = {}
    missing: list[str] = []
    for key, per_class in subsets.items():
        samples: list[Sample] = []
        for name, rels in per_class.items():
            if name not in index:
                raise ValueError(f"split file {path}: class {name!r} in {key!r} is not in class_names")
            for rel in rels:
                p = data_dir / rel
                if not p.is_file():
                    missing.append(rel)
                samples.append((p, index[name]))
        result[key] = samples
    if missing:
        raise ValueError(
            f"split file {path} references {len(missing)} file(s) missing under {data_dir} "
            f"(e.g. {', '.join(missing[:3])}); restore them, or delete the split file to make a new split"
        )
    return class_names, result["train"], result["val"]


def _count_unlisted(data_dir: Path, train: Sequence[Sample], val: Sequence[Sample]) -> int:
    listed = {p.resolve() for p, _ in train} | {p.resolve() for p, _ in val}
    found = {p.resolve() for d in _class_dirs(data_dir) for p in _images_under(d)}
    return len(found - listed)


# --------------------------------------------------------------------------------------------- demo data

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
