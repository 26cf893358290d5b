"""Images for int8: a seeded, stratified sample of a run's training split (never the images evaluated).

A training run writes ``split.json`` beside its checkpoints (:func:`shufflenet.data.write_split`): the data
root and, per subset and class, the image paths. Calibration samples the ``train`` subset; the accuracy check
uses the ``val`` subset.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from shufflenet.data import BadImageError, Sample, list_image_paths, load_image, read_split, scan_image_folder
from shufflenet.transforms import Preprocessing

SPLIT_FILE = "split.json"
CALIBRATION_SIZE = 300  # images int8 calibrates on by default (a seeded, stratified sample)

log = logging.getLogger(__name__)


def run_split(weights: str | Path) -> tuple[list[str], list[Sample], list[Sample]]:
    """Class names, training and validation samples of the run that wrote the checkpoint ``weights``."""
    path = Path(weights).resolve().parent / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist, so the training images of {weights} are unknown; give images to calibrate "
            "on with --calibration DIR (and --val DIR for the accuracy check), or keep the checkpoint in its run folder"
        )
    try:
        root = json.loads(path.read_text())["root"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} has no readable 'root' ({err}); train again or give --calibration DIR") from None
    return read_split(path, root)


def stratified_sample(samples: Sequence[Sample], size: int, seed: int = 0) -> list[Sample]:
    """``size`` samples (or all) spread over the classes in proportion to their counts, seeded; sorted by class."""
    if size < 1:
        raise ValueError(f"calibration size must be at least 1, got {size}")
    by_class: dict[int, list[Path]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    if len(samples) <= size:
        return sorted(samples, key=lambda s: (s[1], str(s[0])))
    rng = random.Random(seed)
    # Largest-remainder apportionment: every class gets its share, rounding never loses or adds images.
    shares = {label: size * len(paths) / len(samples) for label, paths in by_class.items()}
    counts = {label: int(share) for label, share in shares.items()}
    for label in sorted(shares, key=lambda k: counts[k] - shares[k])[: size - sum(counts.values())]:
        counts[label] += 1
    chosen: list[Sample] = []
    for label in sorted(by_class):
        chosen += [(p, label) for p in sorted(rng.sample(sorted(by_class[label]), counts[label]))]
    return chosen


def folder_samples(folder: str | Path) -> list[Sample]:
    """Images of any folder: a class-per-folder tree keeps its labels, a flat folder gets label -1."""
    folder = Path(folder)
    try:
        samples, _ = scan_image_folder(folder)
    except ValueError:
        samples = [(p, -1) for p in list_image_paths([folder])]
    if not samples:
        raise ValueError(f"no images under {folder}; give a folder of images (class folders or flat)")
    return samples


@dataclass
class LoadedImages:
    """Preprocessed images of a list of samples, the labels of those that were read, and the files skipped."""

    batches: list[Tensor]
    labels: Tensor
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def load_images(
    samples: Sequence[Sample], preprocessing: Preprocessing, batch_size: int = 32, what: str = "images"
) -> LoadedImages:
    """The samples' images, preprocessed for inference, as float NCHW batches; unreadable files skipped (warned).

    ``labels`` holds the label of each image read, so a skipped file never shifts the labels of the others.
    """
    transform = preprocessing.eval_transform()
    images, labels, skipped = [], [], []
    for path, label in samples:
        try:
            images.append(transform(load_image(path)))
        except BadImageError as err:
            skipped.append((Path(path), err.reason))
            continue
        labels.append(label)
    if skipped:
        listing = "; ".join(f"{p} ({why})" for p, why in skipped)
        log.warning("skipped %d unreadable image file(s): %s", len(skipped), listing)
    if not images:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"none of the {len(samples)} {what} could be read{first}; give readable image files")
    return LoadedImages(list(torch.stack(images).split(batch_size)), torch.tensor(labels), skipped)


def load_batches(samples: Sequence[Sample], preprocessing: Preprocessing, batch_size: int = 32) -> list[Tensor]:
    """The samples' images, preprocessed for inference, as float NCHW batches (unreadable files skipped, warned)."""
    return load_images(samples, preprocessing, batch_size, "calibration images").batches
