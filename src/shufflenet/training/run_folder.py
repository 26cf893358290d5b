"""The run folder: checks before a run, config.json, metrics.csv, train.log, TensorBoard events and plots."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import platform
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from shufflenet.checkpoints import load_checkpoint
from shufflenet.evaluation import evaluate, write_confusion
from shufflenet.fileio import write_text_atomic
from shufflenet.training.config import TrainConfig
from shufflenet.training.distributed import Distributed
from shufflenet.training.recipes import recipe_record

log = logging.getLogger("shufflenet.training")

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "lr",
    "epoch_seconds",
    "train_img_per_s",
    "bad_images",
)
# Columns a run adds when it keeps an EMA of the weights (shufflenet.training.ema).
EMA_COLUMNS = ("val_loss_ema", "val_acc_ema")
# Files a run writes; --overwrite deletes exactly these (never the whole folder, which may hold other things).
RUN_FILES = (
    "config.json",
    "class_indices.json",
    "metrics.csv",
    "best.pt",
    "best_ema.pt",
    "last.pt",
    "result.png",
    "confusion_matrix.png",
    "confusion_matrix.json",
    "train.log",
    "bad_images.txt",
)
SPLIT_FILE = "split.json"


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run folder that holds files, unless ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} exists and is not a folder; pass another --out")
    if run_dir.is_dir() and not overwrite and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace its "
            f"files, or another --out"
        )


def prepare_run_dir(run_dir: Path, clean: bool) -> None:
    """Create the run folder; ``clean`` deletes the files an earlier run wrote (:data:`RUN_FILES`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if clean:
        # split.json stays, so a rerun over the same data sees the same split.
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink()


def write_run_info(
    run_dir: Path,
    cfg: TrainConfig,
    class_names: list[str],
    dist: Distributed,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    workers: int,
    bundle: Any,
) -> None:
    """config.json (options, resolved settings, versions, command) and class_indices.json."""
    import torchvision

    from shufflenet import __version__

    info = {
        "options": cfg.to_dict(),
        "recipe": recipe_record(cfg, len(bundle.train), dist.world_size, len(class_names)),
        "resolved": {
            "device": str(device),
            "world_size": dist.world_size,
            "backend": dist.backend,
            "amp": str(amp).replace("torch.", "") if amp else None,
            "channels_last": channels_last,
            "workers": workers,
            "threads": torch.get_num_threads(),
            "num_classes": len(class_names),
            "train_images": len(bundle.train),
            "val_images": len(bundle.val),
            "layout": bundle.layout,
            "skipped_files": [[str(p), reason] for p, reason in bundle.skipped],
        },
        "versions": {
            "shufflenet": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": sys.argv,
    }
    write_text_atomic(run_dir / "config.json", json.dumps(info, indent=2, default=str) + "\n")
    indices = {str(i): name for i, name in enumerate(class_names)}
    write_text_atomic(run_dir / "class_indices.json", json.dumps(indices, indent=2) + "\n")


def write_metrics_csv(path: str | Path, rows: Sequence[dict[str, float]]) -> None:
    """Write one row per epoch with :data:`METRIC_COLUMNS` (rewritten whole, atomically, every epoch)."""
    buffer = io.StringIO()
    columns = [*METRIC_COLUMNS, *(c for c in EMA_COLUMNS if rows and c in rows[0])]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(Path(path), buffer.getvalue())


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter in the run folder, or ``None`` when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        log.debug("tensorboard is not installed; no event files")
        return None
    return SummaryWriter(log_dir=str(run_dir))


@contextlib.contextmanager
def log_to_file(path: Path | None) -> Iterator[None]:
    """Copy the package's log records (INFO and up) to the run's train.log while training."""
    if path is None:
        yield
        return
    logger = logging.getLogger("shufflenet")
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def record_epoch(run_dir: Path, history: list[dict[str, float]], tensorboard: Any) -> None:
    """Rewrite metrics.csv and add the last row to the TensorBoard events (step = epoch)."""
    write_metrics_csv(run_dir / "metrics.csv", history)
    if tensorboard is not None:
        row = history[-1]
        for key in (*METRIC_COLUMNS[1:], *EMA_COLUMNS):
            if key in row:
                tensorboard.add_scalar(key, row[key], row["epoch"])
        tensorboard.flush()


def log_epoch(row: dict[str, float], epochs: int, improved: bool) -> None:
    """One INFO line per epoch (also in train.log)."""
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f top5 %.4f | lr %.3g | %.1f s, %.0f img/s%s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["val_top5"],
        row["lr"],
        row["epoch_seconds"],
        row["train_img_per_s"],
        "  (best)" if improved else "",
    )
    if "val_acc_ema" in row:
        log.info(
            "epoch %d/%d  EMA of the weights: val loss %.4f acc %.4f",
            row["epoch"],
            epochs,
            row["val_loss_ema"],
            row["val_acc_ema"],
        )


def write_plots(
    run_dir: Path,
    history: list[dict[str, float]],
    model: nn.Module,
    val_loader: DataLoader | None,
    class_names: list[str],
    **eval_options: Any,
) -> None:
    """result.png (curves) and, given ``val_loader``, the confusion matrix of best.pt on it."""
    from shufflenet.plots import plot_curves

    plot_curves(history, run_dir / "result.png")
    if val_loader is not None and (run_dir / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(run_dir / "best.pt")["state_dict"])
        write_confusion(evaluate(model, val_loader, class_names, **eval_options), run_dir)
