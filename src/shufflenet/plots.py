"""Figures for a run: training curves (the seed's result.png), confusion matrix, predictions.

Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas, never through pyplot, so no
global figure state leaks between calls or threads and no display is needed.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from shufflenet.fileio import atomic_path

_MAX_ANNOTATED_CLASSES = 30


def _to_float(value: Any) -> float:
    """Metric cell -> float; blanks and junk become NaN (a gap in the line) rather than an error."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a run's metrics.csv: one dict per row, numbers parsed (int, else float), blanks as None."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"metrics file {path} does not exist")
    with path.open(newline="") as f:
        return [{key: _parse_cell(value or "") for key, value in row.items()} for row in csv.DictReader(f)]


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure as PNG atomically, so a reader never sees half a file."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and val) side by side, as in the seed's result.png."""
    if not rows:
        raise ValueError(f"no metrics rows to plot into {path}")
    epochs = [_to_float(row.get("epoch", i + 1)) for i, row in enumerate(rows)]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    panels = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")))
    for ax, (title, keys) in zip(fig.subplots(1, 2), panels, strict=True):
        for key, style in zip(keys, ("-o", "-s"), strict=True):
            values = [_to_float(row.get(key)) for row in rows]
            if all(math.isnan(v) for v in values):
                continue
            ax.plot(epochs, values, style, markersize=4, label=key.replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if len(epochs) <= 20:
            ax.set_xticks([e for e in epochs if not math.isnan(e)])
        if ax.lines:
            ax.legend()
        if title == "accuracy":
            accs = [y for line in ax.lines for y in line.get_ydata() if not math.isnan(y)]
            if accs and max(accs) <= 1.0:
                ax.set_ylim(0.0, 1.02)
    return _save(fig, path)


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], path: str | Path, normalize: bool = False) -> Path:
    """Heatmap of true (rows) vs predicted (columns) classes, each cell annotated; ``normalize`` by row."""
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape} but there are {n} class names")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        values = counts
    side = min(max(4.0, 0.45 * n + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(float(values.max(initial=0.0)), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if n <= _MAX_ANNOTATED_CLASSES:  # beyond that the numbers overlap and only the colours are readable
        fontsize = 10 if n <= 10 else 7
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                text = f"{v:.2f}" if normalize else (f"{int(v)}" if float(v).is_integer() else f"{v:.2f}")
                colour = "white" if v > vmax / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    return _save(fig, path)


def plot_predictions(images: Sequence[Image.Image], titles: Sequence[str], path: str | Path, ncols: int = 4) -> Path:
    """One picture with its title (e.g. predicted class and probability), or a grid of them."""
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles; pass one title per image")
    if not images:
        raise ValueError(f"no images to plot into {path}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    cell = 5.0 if len(images) == 1 else 3.0
    fig = Figure(figsize=(cell * ncols, (cell + 0.4) * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    width = 28 if len(images) == 1 else 22
    for ax, image, title in zip(axes, images, titles, strict=False):
        ax.imshow(np.asarray(image.convert("RGB")))
        ax.set_title("\n".join(textwrap.wrap(str(title), width)) or " ", fontsize=11 if len(images) == 1 else 9)
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, path)
