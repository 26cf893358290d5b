"""What ``last.pt`` holds so that ``--resume`` continues a run: position, optimizer, schedule, RNG, history.

A new resume field goes in :func:`last_checkpoint` (written) and :func:`restore` (read back, with a default
for older files), and, when the loop needs it, in :class:`ResumePoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shufflenet.checkpoints import CheckpointError, load_checkpoint
from shufflenet.training.config import RUNTIME_OPTIONS, TrainConfig
from shufflenet.training.distributed import Distributed

log = logging.getLogger("shufflenet.training")


@dataclass
class ResumePoint:
    """Where the loop starts: epoch and step, the metrics so far and a partly done epoch's sums."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int | None = None
    sums: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))  # loss, correct, n
    seconds: float = 0.0


def read_last_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``RUN/last.pt``, checked to be one that ``shufflenet train`` wrote."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist; start the run without --resume")
    checkpoint = load_checkpoint(path)
    for key in ("config", "optimizer", "scheduler", "epoch", "rng"):
        if key not in checkpoint:
            raise CheckpointError(f"--resume: {path} has no {key!r}; it is not a last.pt written by shufflenet train")
    return checkpoint


def resumed_config(checkpoint: dict[str, Any], cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, list[str]]:
    """The run's own options from last.pt with the runtime options (epochs, device, …) the caller gave,
    and a message for each other option given that differs (it is ignored)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    resumed = TrainConfig(**{k: v for k, v in checkpoint["config"].items() if k in known})
    ignored = []
    for key in sorted(explicit):
        value, own = getattr(cfg, key), getattr(resumed, key)
        if key in RUNTIME_OPTIONS:
            setattr(resumed, key, value)
        elif key not in ("resume", "overwrite") and value != own:
            ignored.append(f"ignoring {key}={value!r}: a resumed run keeps its own {key}={own!r}")
    resumed.out, resumed.resume = cfg.out, True
    return resumed.validate(), ignored


def restore(
    checkpoint: dict[str, Any],
    run_dir: Path,
    cfg: TrainConfig,
    class_names: list[str],
    objects: dict[str, Any],
    dist: Distributed,
) -> ResumePoint:
    """Load ``objects`` (model, optimizer, scheduler, scaler) and the RNG from last.pt; where to continue."""
    _check_same_classes(checkpoint, class_names, run_dir / "last.pt", cfg.data)
    model: nn.Module = objects["model"]
    model.load_state_dict(checkpoint["state_dict"])
    objects["optimizer"].load_state_dict(checkpoint["optimizer"])
    objects["scheduler"].load_state_dict(checkpoint["scheduler"])
    scaler = objects["scaler"]
    if checkpoint.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
    point = ResumePoint(
        epoch=int(checkpoint["epoch"]),
        step=int(checkpoint.get("step", 0)),
        history=[dict(row) for row in checkpoint.get("history", [])][: int(checkpoint["epoch"])],
        best_val_acc=float(checkpoint.get("best_val_acc", -1.0)),
        best_epoch=checkpoint.get("best_epoch"),
    )
    if point.step and checkpoint.get("world_size", 1) != dist.world_size:
        log.warning("the interrupted epoch ran with another world size; it restarts from its beginning")
        point.step = 0
    if point.step:
        # The partial sums are every rank's so far, counted once: on rank 0.
        point.sums = torch.tensor(checkpoint["partial"]["sums"], dtype=torch.float64) * float(dist.is_main)
        point.seconds = float(checkpoint["partial"]["seconds"])
    set_rng_state(checkpoint["rng"], offset=dist.rank)
    log.info("resumed %s at epoch %d, step %d; training to epoch %d", run_dir, point.epoch, point.step, cfg.epochs)
    if point.epoch >= cfg.epochs:
        raise ValueError(
            f"{run_dir / 'last.pt'} has already completed {point.epoch} epochs; pass --epochs N with "
            f"N > {point.epoch} to train further"
        )
    return point


def last_checkpoint(
    base: dict[str, Any], objects: dict[str, Any], point: ResumePoint, world_size: int
) -> dict[str, Any]:
    """``base`` (model, classes, options) plus everything :func:`restore` reads back."""
    return {
        **base,
        "epoch": point.epoch,
        "step": point.step,
        "partial": {"sums": point.sums.tolist(), "seconds": point.seconds},
        "optimizer": objects["optimizer"].state_dict(),
        "scheduler": objects["scheduler"].state_dict(),
        "scaler": objects["scaler"].state_dict(),
        "rng": rng_state(),
        "history": point.history,
        "best_val_acc": point.best_val_acc,
        "best_epoch": point.best_epoch,
        "world_size": world_size,
    }


def _check_same_classes(checkpoint: dict[str, Any], class_names: list[str], path: Path, data: str | None) -> None:
    saved = list(checkpoint.get("class_names") or [])
    if saved != class_names:
        raise ValueError(
            f"{path} was trained on classes {saved}, but {data} has {class_names}; resume with the same data"
        )


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Random generator states as tensors and plain lists (loadable with torch.load(weights_only=True))."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], offset: int = 0) -> None:
    """Put back what :func:`rng_state` saved; other ranks (``offset`` > 0) get a distinct reproducible stream."""
    if offset:
        seed_everything(int(state["torch"][:8].sum().item()) + offset)
        return
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(state["cuda"])
