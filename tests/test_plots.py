"""Run figures are real PNG files with the expected content."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shufflenet.plots import plot_confusion_matrix, plot_curves, plot_predictions, read_metrics_csv

COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr"]


def open_png(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.convert("RGB")


def write_metrics(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for e in range(1, n + 1):
            writer.writerow(
                {
                    "epoch": e,
                    "train_loss": 2.0 / e,
                    "train_acc": 0.5 + 0.08 * e,
                    "val_loss": 2.2 / e,
                    "val_acc": 0.45 + 0.08 * e,
                    "val_top5": "",
                    "lr": 1e-4,
                }
            )
    return path


def test_read_metrics_csv_parses_numbers(tmp_path: Path) -> None:
    rows = read_metrics_csv(write_metrics(tmp_path / "metrics.csv", 3))
    assert len(rows) == 3
    assert rows[2]["epoch"] == 3 and isinstance(rows[2]["epoch"], int)
    assert rows[0]["train_loss"] == pytest.approx(2.0) and rows[0]["lr"] == pytest.approx(1e-4)
    assert rows[0]["val_top5"] is None
    with pytest.raises(ValueError, match=r"missing\.csv does not exist"):
        read_metrics_csv(tmp_path / "missing.csv")


def test_plot_curves_from_csv_and_string_rows(tmp_path: Path) -> None:
    csv_path = write_metrics(tmp_path / "metrics.csv", 5)
    out = plot_curves(read_metrics_csv(csv_path), tmp_path / "run" / "result.png")
    assert out == tmp_path / "run" / "result.png"
    image = open_png(out)
    assert image.width > image.height > 100  # two panels side by side
    pixels = np.asarray(image)
    assert (pixels != 255).any(axis=-1).mean() > 0.02  # lines, axes and text were drawn

    with csv_path.open(newline="") as f:
        raw_rows = list(csv.DictReader(f))  # values are all str, as the engine may pass them
    open_png(plot_curves(raw_rows, tmp_path / "raw.png"))
    open_png(plot_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.4}], tmp_path / "partial.png"))
    with pytest.raises(ValueError, match="no metrics rows"):
        plot_curves([], tmp_path / "empty.png")
    assert not list(tmp_path.glob("run/.*"))  # no temporary files left behind


def test_plot_confusion_matrix(tmp_path: Path) -> None:
    matrix = np.array([[8, 2, 0], [1, 7, 2], [0, 0, 10]])
    names = ["ants", "bees", "wasps"]
    counts = open_png(plot_confusion_matrix(matrix, names, tmp_path / "cm.png"))
    normalised = open_png(plot_confusion_matrix(matrix.tolist(), names, tmp_path / "cmn.png", normalize=True))
    assert counts.size == normalised.size
    assert not np.array_equal(np.asarray(counts), np.asarray(normalised))  # annotations differ
    blue = np.asarray(counts).astype(int)
    assert ((blue[..., 2] - blue[..., 0]) > 100).any()  # the heatmap's dark blue cells
    many = np.eye(40, dtype=int) * 3
    open_png(plot_confusion_matrix(many, [f"c{i}" for i in range(40)], tmp_path / "big.png"))
    with pytest.raises(ValueError, match=r"shape \(3, 3\) but there are 2 class names"):
        plot_confusion_matrix(matrix, names[:2], tmp_path / "bad.png")


def test_plot_predictions_single_and_grid(tmp_path: Path) -> None:
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    gray = Image.new("L", (48, 32), 80)
    one = open_png(plot_predictions([red], ["ants 0.93"], tmp_path / "one.png"))
    assert (np.asarray(one) == (255, 0, 0)).all(axis=-1).sum() > 1000  # the picture itself is shown
    grid = open_png(plot_predictions([red, gray] * 3, [f"bees {i / 10:.2f}" for i in range(6)], tmp_path / "g.png"))
    wide = open_png(plot_predictions([red, gray] * 3, ["x"] * 6, tmp_path / "w.png", ncols=6))
    assert grid.height > wide.height and wide.width > grid.width  # 4 + 2 in two rows vs one row of 6
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        plot_predictions([red, gray], ["a"], tmp_path / "x.png")
