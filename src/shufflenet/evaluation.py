"""Evaluation and prediction: accuracy, loss, per-class precision/recall and confusion matrix; top-k classes.

:func:`evaluate` and :func:`predict` accept a model or any callable that maps an NCHW float batch to logits
(e.g. ``shufflenet.deploy.compile_for_inference``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from shufflenet.data import (
    BadImageError,
    ImageFolderDataset,
    list_image_paths,
    load_image,
    scan_image_folder,
    verify_images,
)
from shufflenet.fileio import write_text_atomic
from shufflenet.transforms import Preprocessing

log = logging.getLogger("shufflenet.evaluation")


@dataclass
class EvalResult:
    """Top-1/top-k accuracy, loss and per-class precision/recall on a labelled dataset, with its confusion matrix."""

    top1: float
    top5: float
    loss: float
    num_images: int
    class_names: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    topk: int = 5

    @property
    def per_class(self) -> list[dict[str, Any]]:
        """Precision, recall and support of each class."""
        matrix = np.asarray(self.confusion, dtype=np.int64)
        rows = []
        for i, name in enumerate(self.class_names):
            predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
            rows.append(
                {
                    "class": name,
                    "precision": float(matrix[i, i] / predicted) if predicted else 0.0,
                    "recall": float(matrix[i, i] / actual) if actual else 0.0,
                    "support": int(actual),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the eval JSON)."""
        return {
            "top1": self.top1,
            f"top{self.topk}": self.top5,
            "loss": self.loss,
            "num_images": self.num_images,
            "class_names": self.class_names,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
        }


Logits = Callable[[Tensor], Tensor]


def evaluate(
    model: nn.Module | Logits,
    data: Dataset | DataLoader,
    class_names: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    workers: int = 0,
    progress: bool = False,
    batch_transform: Callable[[Tensor], Tensor] | None = None,
) -> EvalResult:
    """Top-1, top-5, loss, per-class precision/recall and confusion matrix of ``model`` on labelled ``data``.

    ``model`` may be any callable from an NCHW float batch to logits (e.g. a compiled/exported model).
    ``batch_transform`` is applied to each batch on ``device`` (e.g. :func:`batch_normalizer` for uint8 data).
    """
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    if not names:
        raise ValueError("evaluate needs class_names (or a model loaded with shufflenet.load_model)")
    device = torch.device(device)
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, num_workers=workers)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sums, confusion = eval_sums(model, loader, len(names), device, amp, memory_format, batch_transform, progress)
    return eval_result(sums, confusion, names)


def eval_sums(
    model: nn.Module | Logits,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format,
    batch_transform: Callable[[Tensor], Tensor] | None,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """(loss sum, top-1 hits, top-k hits, count) and the confusion matrix, for summing across processes."""
    if isinstance(model, nn.Module):
        model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    bar = progress_bar(len(loader), 0, "eval", progress)
    with torch.inference_mode():
        for images, targets in loader:
            images = images.to(device, memory_format=memory_format)
            if batch_transform is not None:
                images = batch_transform(images)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = torch.as_tensor(model(images))
            logits, targets = logits.float().cpu(), targets.cpu()
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(
                    f"the model gives outputs of shape {tuple(logits.shape)} for {num_classes} classes; "
                    f"is it the right checkpoint for this data?"
                )
            top = logits.topk(k, dim=1).indices
            sums += torch.tensor(
                [
                    nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
                    (top[:, 0] == targets).sum().item(),
                    (top == targets[:, None]).any(1).sum().item(),
                    len(targets),
                ],
                dtype=torch.float64,
            )
            confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes**2).view_as(confusion)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return sums, confusion


def eval_result(sums: Tensor, confusion: Tensor, class_names: list[str]) -> EvalResult:
    """The :class:`EvalResult` of sums from :func:`eval_sums` (possibly summed over processes)."""
    loss, top1, topk, count = sums.tolist()
    count = max(count, 1)
    return EvalResult(
        top1=top1 / count,
        top5=topk / count,
        loss=loss / count,
        num_images=int(sums[3].item()),
        class_names=list(class_names),
        confusion=confusion.tolist(),
        topk=min(5, len(class_names)),
    )


def load_eval_dataset(
    data_dir: str | Path, class_names: Sequence[str], preprocessing: Preprocessing, verify: bool = True
) -> tuple[ImageFolderDataset, list[tuple[Path, str]]]:
    """A class-per-folder tree as an evaluation dataset whose labels follow ``class_names`` (a checkpoint's).

    A seed-layout root (``train/`` + ``val/``) means its ``val/``. Errors name the classes that differ.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"data directory {root} does not exist; check the path")
    names = list(class_names)
    if (root / "val").is_dir() and (root / "train").is_dir() and not {"train", "val"} <= set(names):
        log.info("%s has train/ and val/ folders: evaluating on %s", root, root / "val")
        root = root / "val"
    samples, found = scan_image_folder(root)
    if found != sorted(names) or len(found) != len(names):
        missing, extra = sorted(set(names) - set(found)), sorted(set(found) - set(names))
        raise ValueError(
            f"class folders of {root} do not match the checkpoint's {len(names)} classes: "
            f"missing {missing or 'none'}, not in the checkpoint {extra or 'none'}; "
            f"pass a folder with exactly the checkpoint's class folders"
        )
    index = {name: i for i, name in enumerate(names)}
    samples = [(path, index[found[label]]) for path, label in samples]
    skipped: list[tuple[Path, str]] = []
    if verify:
        samples, skipped = verify_images(samples)
        if skipped:
            listing = "; ".join(f"{p} ({why})" for p, why in skipped)
            log.warning("skipped %d unreadable image file(s): %s", len(skipped), listing)
    if not samples:
        raise ValueError(f"no readable images in {root}")
    return ImageFolderDataset(samples, names, preprocessing.eval_transform()), skipped


def write_confusion(result: EvalResult, out_dir: str | Path, name: str = "confusion_matrix") -> tuple[Path, Path]:
    """Write the confusion matrix of ``result`` as ``name``.png and ``name``.json in ``out_dir``."""
    from shufflenet.plots import plot_confusion_matrix

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / f"{name}.png", out_dir / f"{name}.json"
    plot_confusion_matrix(result.confusion, result.class_names, png)
    write_text_atomic(js, json.dumps(result.to_dict(), indent=2) + "\n")
    return png, js


@dataclass
class Prediction:
    """The top-k classes of one image with their probabilities, most likely first."""

    path: Path
    topk: list[tuple[str, float]]

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.topk[0][0]

    @property
    def probability(self) -> float:
        """The probability of the most likely class."""
        return self.topk[0][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the predict JSON)."""
        return {
            "path": str(self.path),
            "label": self.label,
            "probability": self.probability,
            "topk": [{"class": c, "probability": p} for c, p in self.topk],
        }


@dataclass
class PredictResult:
    """Predictions for the readable images, and the files that could not be read."""

    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]


def predict(
    model: nn.Module | Logits,
    paths: Sequence[str | Path],
    *,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> PredictResult:
    """Top-k classes with probabilities for image files and folders (searched recursively).

    ``class_names`` and ``preprocessing`` default to those a :func:`shufflenet.load_model` model carries.
    """
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    pre = preprocessing or getattr(model, "preprocessing", None)
    if not names or pre is None:
        raise ValueError("predict needs class_names and preprocessing (or a model from shufflenet.load_model)")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    k = min(topk, len(names))
    files = list_image_paths(paths)
    transform = pre.eval_transform()
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    for start in range(0, len(files), batch_size):
        batch, batch_paths = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(transform(load_image(path)))
                batch_paths.append(path)
            except BadImageError as err:
                skipped.append((path, err.reason))
        if not batch:
            continue
        with torch.inference_mode():
            logits = torch.as_tensor(model(torch.stack(batch).to(device))).float().cpu()
        if logits.ndim != 2 or logits.shape[1] != len(names):
            raise ValueError(f"the model gives outputs of shape {tuple(logits.shape)} for {len(names)} class names")
        probs, indices = logits.softmax(1).topk(k, dim=1)
        for path, p_row, i_row in zip(batch_paths, probs.tolist(), indices.tolist(), strict=True):
            predictions.append(Prediction(path, [(names[i], p) for i, p in zip(i_row, p_row, strict=True)]))
    if skipped:
        log.warning(
            "skipped %d unreadable image file(s): %s", len(skipped), "; ".join(f"{p} ({r})" for p, r in skipped)
        )
    return PredictResult(predictions, skipped)


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or ``None`` when ``enabled`` is false (the library never prints otherwise)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)
