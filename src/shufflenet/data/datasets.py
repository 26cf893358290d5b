"""Train/val datasets from an image folder: its layout, the split, verified files, and the transforms.

Two layouts are understood: ``DIR/train/<class>/…`` + ``DIR/val/<class>/…`` (the seed's), or one
``DIR/<class>/…`` tree that is split into train/val by a seeded, stratified fraction and saved so reruns match.
Building lists files only; a file that cannot be decoded is found when it is loaded and replaced by the next
readable one (:mod:`~shufflenet.data.bad_images`). ``verify=True`` decodes every file first and drops the bad
ones (small folders; ``shufflenet verify-data`` does it in parallel). Non-image files are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shufflenet.data.bad_images import BadImageLog
from shufflenet.data.file_list import as_file_list
from shufflenet.data.folders import _check_dir, scan_image_folder
from shufflenet.data.images import BadImageError, Sample, load_image, verify_images
from shufflenet.data.splits import (
    LAYOUT_SPLIT,
    LAYOUT_TRAIN_VAL,
    read_split,
    relative_image_names,
    stratified_split,
    write_split,
)
from shufflenet.transforms import Preprocessing, eval_transform, train_transform

logger = logging.getLogger("shufflenet")
CHANGED = "the data changed"  # a note about files added since the saved file lists

# Class names, train samples, validation samples, and the (path, reason) of files that failed to decode.
_Subsets = tuple[list[str], list[Sample], list[Sample], list[tuple[Path, str]]]


class ImageFolderDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (transformed image, label); a file that fails to decode is replaced, not fatal.

    The stand-in for an unreadable file is the next readable one in the list (usually the same class), the
    same in every process and every epoch, so epochs keep their length and batch shapes and a resume replays
    them exactly. Each bad file is warned about once per process and appended to ``bad_log`` when given.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        draft_size: int | None = None,
        bad_log: BadImageLog | None = None,
        load: Callable[[Path], Any] | None = None,
    ) -> None:
        # Packed, not a list of tuples: forked loader workers would each copy a list (data/file_list.py).
        self.samples = as_file_list(samples)
        self.class_names: list[str] = list(class_names)
        self.transform = transform
        self.draft_size = draft_size
        self.bad_log = bad_log
        self.load = load  # None: decode with PIL (load_image); the GPU input path reads bytes only
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own copy)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Every sample's label, in order."""
        return self.samples.labels.tolist()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not self.samples:
            raise IndexError("empty dataset")
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            path, label = self.samples.name(i), int(self.samples.labels[i])  # str: see FileList.name
            try:
                image = self.load(path) if self.load is not None else load_image(path, draft_size=self.draft_size)
            except BadImageError as exc:
                self._bad.add(i)
                logger.warning("%s; using the next readable image in its place", exc)
                if self.bad_log is not None:
                    self.bad_log.record(path, exc.reason)
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise RuntimeError(f"none of the {n} images in this dataset can be read (first: {self.samples[0][0]})")

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        counts = np.bincount(self.samples.labels, minlength=len(self.class_names))
        return {name: int(count) for name, count in zip(self.class_names, counts, strict=True)}

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
    verify: bool = False,
    draft: bool = False,
    transforms: tuple[Callable[[Image.Image], Any], Callable[[Image.Image], Any]] | None = None,
    bad_log: BadImageLog | None = None,
) -> DataBundle:
    """Train/val datasets from ``train/`` + ``val/`` folders or a seeded stratified split of one class tree.

    The file lists (relative paths per subset and class) are written to ``split_file`` when given; an existing
    ``split_file`` is reused whatever the layout, so a rerun or resume neither rescans differently nor
    re-splits (files added since are reported, missing ones are an error). Only file names are read unless
    ``verify``. ``draft=True`` decodes JPEGs at reduced size (>= ``preprocessing.resize_size``).
    ``transforms`` is (train, val); by default :func:`~shufflenet.transforms.train_transform` and
    :func:`~shufflenet.transforms.eval_transform` of ``preprocessing`` (uint8 tensors).
    """
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    split_path = Path(split_file) if split_file is not None else None
    notes: list[str] = []

    if layout == LAYOUT_SPLIT and not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be between 0 and 1 (exclusive), got {val_split}")
    if split_path is not None and split_path.exists():
        # Reused as-is: never rewrite the user's file.
        class_names, train_samples, val_samples, skipped = _saved_split_subsets(data_dir, split_path, verify, notes)
    else:
        if layout == LAYOUT_TRAIN_VAL:
            class_names, train_samples, val_samples, skipped = _train_val_subsets(data_dir, verify)
        else:
            class_names, train_samples, val_samples, skipped = _new_split_subsets(data_dir, val_split, seed, verify)
        if split_path is not None:
            fraction = val_split if layout == LAYOUT_SPLIT else None
            write_split(split_path, data_dir, class_names, train_samples, val_samples, seed, fraction, layout)

    if skipped:
        listing = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        logger.warning("skipped %d unreadable image file(s): %s", len(skipped), listing)
    for note in notes:
        (logger.warning if note.startswith(CHANGED) else logger.info)(note)

    train_tf, val_tf = transforms or (train_transform(preprocessing), eval_transform(preprocessing))
    options: dict[str, Any] = {"draft_size": preprocessing.resize_size if draft else None, "bad_log": bad_log}
    train = ImageFolderDataset(train_samples, class_names, train_tf, **options)
    val = ImageFolderDataset(val_samples, class_names, val_tf, **options)
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


def _train_val_subsets(data_dir: Path, verify: bool) -> _Subsets:
    """The ``train/`` and ``val/`` trees, which must hold the same classes, each class readable in both."""
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
    train_samples, val_samples, skipped = _verified(train_samples, val_samples, verify)
    _require_each_class(train_samples, class_names, "training", data_dir / "train")
    _require_each_class(val_samples, class_names, "validation", data_dir / "val")
    return class_names, train_samples, val_samples, skipped


def _saved_split_subsets(data_dir: Path, split_path: Path, verify: bool, notes: list[str]) -> _Subsets:
    """The file lists saved in ``split_path``; images added since are reported, not used."""
    found = relative_image_names(data_dir)  # one walk: files missing from and added to the saved lists
    class_names, train_samples, val_samples = read_split(split_path, data_dir, found)
    unlisted = len(found) - len(train_samples) - len(val_samples)
    if unlisted:
        notes.append(
            f"{CHANGED}: {unlisted} image(s) in {data_dir} are not in {split_path} and are not used "
            f"(a new run folder lists them)"
        )
    notes.append(f"reused the split in {split_path}")
    train_samples, val_samples, skipped = _verified(train_samples, val_samples, verify)
    _require_each_class(val_samples, class_names, "validation", split_path)
    _require_each_class(train_samples, class_names, "training", split_path)
    return class_names, train_samples, val_samples, skipped


def _new_split_subsets(data_dir: Path, val_split: float, seed: int, verify: bool) -> _Subsets:
    """A seeded stratified split of one class tree, made after unreadable files are dropped."""
    samples, class_names = scan_image_folder(data_dir)
    skipped: list[tuple[Path, str]] = []
    if verify:
        samples, skipped = verify_images(samples)
    train_samples, val_samples = stratified_split(samples, class_names, val_split, seed)
    return class_names, train_samples, val_samples, skipped


def _verified(
    train: list[Sample], val: list[Sample], verify: bool
) -> tuple[list[Sample], list[Sample], list[tuple[Path, str]]]:
    """Both subsets without their unreadable files, and those files; unchanged when ``verify`` is off."""
    if not verify:
        return train, val, []
    train, bad_train = verify_images(train)
    val, bad_val = verify_images(val)
    return train, val, bad_train + bad_val


def _require_each_class(samples: Sequence[Sample], class_names: Sequence[str], subset: str, where: Path) -> None:
    present = {label for _, label in samples}
    missing = [name for i, name in enumerate(class_names) if i not in present]
    if missing:
        raise ValueError(
            f"class(es) with no readable {subset} image: {', '.join(missing)} (in {where}); "
            f"add images for them or remove the class folder(s)"
        )
