"""Training, evaluation and prediction: the seed's fine-tuning experiment as one readable loop.

:func:`train` reads top to bottom like nanoGPT's ``train.py``: options -> processes (DDP when torchrun's
environment variables are set) -> run folder -> data -> model -> optimizer -> resume -> epochs of train steps,
validation and checkpoints -> plots. Only rank 0 writes files. :func:`evaluate` and :func:`predict` accept a
model or any callable that maps an NCHW float batch to logits (e.g. ``shufflenet.deploy.compile_for_inference``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.transforms import v2 as T

from shufflenet.data import (
    BadImageError,
    ImageFolderDataset,
    build_datasets,
    detect_layout,
    list_image_paths,
    load_image,
    scan_image_folder,
    verify_images,
)
from shufflenet.fileio import write_text_atomic
from shufflenet.models import create_model
from shufflenet.transforms import Preprocessing
from shufflenet.weights import CheckpointError, load_checkpoint, load_pretrained, make_checkpoint, save_checkpoint

log = logging.getLogger("shufflenet.engine")

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Weight decay when none is given: the seed's Adam has none; SGD uses the ShuffleNet papers' 4e-5.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.05, "sgd": 4e-5}
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
)
# Files a run writes; --overwrite deletes exactly these (never the whole folder, which may hold other things).
RUN_FILES = (
    "config.json",
    "class_indices.json",
    "metrics.csv",
    "best.pt",
    "last.pt",
    "result.png",
    "confusion_matrix.png",
    "confusion_matrix.json",
    "train.log",
)
SPLIT_FILE = "split.json"
CACHE_BUDGET = 2 * 1024**3  # bytes of decoded images kept in memory when cache_images is None
# Options that may change when a run is resumed; the others define the run and are kept from last.pt.
RUNTIME_OPTIONS = ("data", "out", "epochs", "device", "amp", "channels_last", "workers", "threads", "progress")


@dataclass
class TrainConfig:
    """Every option of a training run (the CLI's flags); the defaults are the seed experiment's."""

    data: str | None = None  # train/ + val/ class folders, or one class tree split by val_split
    out: str | None = None  # run folder
    model: str = "shufflenet_v2_x1_0"
    weights: str | None = None  # pretrained .pth/.safetensors; the classifier is re-initialised if needed
    freeze_backbone: bool = False  # train the classifier only (linear evaluation)
    epochs: int = 5
    batch_size: int = 32  # per process under torchrun
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]; never applied to BN or biases
    momentum: float = 0.9  # SGD only
    schedule: str = "constant"  # or "cosine" (per step, after warm-up)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    img_size: int = 224
    crop_scale: float = 0.08  # smallest area fraction of RandomResizedCrop
    hflip: bool = True
    val_split: float = 0.2
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu
    amp: str = "auto"  # auto: bf16 (fp16 without bf16 support) on CUDA GPUs, float32 elsewhere
    channels_last: bool | None = None  # None: on for CPU and CUDA (much faster depthwise convs there)
    workers: int | None = None  # None: picked for the device
    threads: int | None = None  # PyTorch CPU threads (None: its default, one per core); 1 on a busy machine
    cache_images: bool | None = None  # keep decoded, resized images in memory (None: when they fit in 2 GiB)
    resume: bool = False
    overwrite: bool = False
    progress: bool = False  # tqdm bars on stderr (the CLI turns them on unless --quiet)

    def validate(self) -> TrainConfig:
        """Check option values; raises ValueError naming the option and what is allowed."""
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": DEVICES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).split(":")[0] in DEVICES):
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "img_size": self.img_size, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16 pixels, got {self.img_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.warmup_epochs < 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ValueError("warmup_epochs and weight_decay must be >= 0")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.out:
            raise ValueError("no run folder given: pass --out RUN (e.g. runs/exp1)")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pass one of them")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (config.json and checkpoints)."""
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run produced: one row per epoch (as in metrics.csv) and where the files are."""

    run_dir: Path
    history: list[dict[str, float]]
    best_epoch: int | None
    best_val_acc: float | None
    stopped: str | None = None  # None when all epochs ran; "interrupted" or "diverged"
    message: str = ""
    world_size: int = 1
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, float]:
        """The last completed epoch's metrics (empty before the first one)."""
        return self.history[-1] if self.history else {}


# --------------------------------------------------------------------------------------------- training


def train(config: TrainConfig | None = None, /, **options: Any) -> TrainResult:
    """Train or fine-tune a model (options as :class:`TrainConfig` / the CLI); returns the per-epoch metrics."""
    if config is not None and options:
        config = dataclasses.replace(config, **options)
    if config is None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; see shufflenet.engine.TrainConfig")
        config = TrainConfig(**options)
        explicit = set(options)
    else:
        explicit = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}
    config.validate()
    dist = _Distributed.from_environment(config.device)
    stop = _StopRequest()
    try:
        with stop.installed():
            return _train(config, explicit, dist, stop)
    finally:
        dist.close()


def _train(cfg: TrainConfig, explicit: set[str], dist: _Distributed, stop: _StopRequest) -> TrainResult:
    # ---- run folder: checked by every rank before rank 0 writes into it
    run_dir = Path(cfg.out)
    resume_from, ignored = None, []
    if cfg.resume:
        resume_from = _read_last_checkpoint(run_dir)
        cfg, ignored = _resumed_config(resume_from, cfg, explicit)
    else:
        _check_new_run_dir(run_dir, cfg.overwrite)
    if cfg.data is None:
        raise ValueError("no data directory given: pass --data DIR")
    split_existed = (run_dir / SPLIT_FILE).is_file()
    dist.barrier()
    if dist.is_main:
        _prepare_run_dir(run_dir, clean=cfg.overwrite)
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with _log_to_file(run_dir / "train.log" if dist.is_main else None):
            for message in ignored:
                log.warning(message)
            return _train_in_run_dir(cfg, run_dir, resume_from, split_existed, dist, stop)
    finally:
        torch.set_num_threads(threads)


def _train_in_run_dir(
    cfg: TrainConfig,
    run_dir: Path,
    resume_from: dict[str, Any] | None,
    split_existed: bool,
    dist: _Distributed,
    stop: _StopRequest,
) -> TrainResult:
    device = dist.device
    amp_dtype = resolve_amp(cfg.amp, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    log.info(
        "world size %d (%s), device %s, amp %s, channels_last %s, %d CPU threads",
        dist.world_size,
        dist.backend or "single process",
        device,
        str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        channels_last,
        torch.get_num_threads(),
    )
    _seed_everything(cfg.seed + dist.rank)

    # ---- data: train/ + val/ folders, or one class tree split (seeded, stratified) and saved to split.json
    preprocessing = Preprocessing.for_size(cfg.img_size)
    # Rank 0 writes split.json; the others compute the same seeded split, or read the file if it already was.
    use_split_file = dist.is_main or (split_existed and detect_layout(cfg.data) == "split")
    bundle = build_datasets(
        cfg.data,
        preprocessing,
        val_split=cfg.val_split,
        seed=cfg.seed,
        split_file=run_dir / SPLIT_FILE if use_split_file else None,
        draft=True,
    )
    class_names = bundle.class_names
    bundle.train.transform = train_transform(preprocessing, cfg.crop_scale, cfg.hflip)
    bundle.val.transform = eval_transform(preprocessing)
    normalize = batch_normalizer(preprocessing)
    # Half the budget each: the auto cache is for datasets that fit in memory many times over.
    train_data = _maybe_cache(cfg.cache_images, bundle.train, preprocessing, CACHE_BUDGET // 2)
    val_data = _maybe_cache(cfg.cache_images, bundle.val, preprocessing, CACHE_BUDGET // 2)
    cache = isinstance(train_data, CachedImages)
    workers = resolve_workers(cfg.workers, device, cached=cache)
    log.info(
        "data %s (%s layout): %d train and %d val images, %d classes%s%s, %d loader workers per process",
        cfg.data,
        bundle.layout,
        len(bundle.train),
        len(bundle.val),
        len(class_names),
        f"; skipped {len(bundle.skipped)} unreadable file(s)" if bundle.skipped else "",
        "; decoded images cached in memory" if cache else "",
        workers,
    )
    train_sampler = _ResumableSampler(
        DistributedSampler(train_data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed)
    )
    per_rank = len(train_sampler.sampler)
    loader_options = _loader_options(workers, device)
    train_loader = DataLoader(
        train_data,
        batch_size=cfg.batch_size,
        sampler=train_sampler,
        # BatchNorm cannot train on a batch of one image.
        drop_last=per_rank % cfg.batch_size == 1,
        **loader_options,
    )
    val_shard = Subset(val_data, list(range(dist.rank, len(val_data), dist.world_size)))
    val_loader = DataLoader(val_shard, batch_size=cfg.batch_size, **loader_options)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data}: too few training images for one batch per process; add images")

    # ---- model, optimizer, schedule
    model = create_model(cfg.model, num_classes=len(class_names))
    if cfg.weights and resume_from is None:
        report = load_pretrained(model, cfg.weights)
        log.info("weights: %s", report.summary())
    if cfg.freeze_backbone:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, schedule=cfg.schedule, warmup_steps=warmup_steps, total_steps=total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # ---- resume: weights, optimizer, schedule, RNG, history and a partly done epoch, from last.pt
    start_epoch, start_step, history = 0, 0, []
    best_val_acc, best_epoch = -1.0, None
    partial_sums, partial_seconds = torch.zeros(3, dtype=torch.float64), 0.0
    if resume_from is not None:
        _check_same_classes(resume_from, class_names, run_dir / "last.pt", cfg.data)
        model.load_state_dict(resume_from["state_dict"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        if resume_from.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resume_from["scaler"])
        start_epoch, start_step = int(resume_from["epoch"]), int(resume_from.get("step", 0))
        history = [dict(row) for row in resume_from.get("history", [])][:start_epoch]
        best_val_acc = float(resume_from.get("best_val_acc", -1.0))
        best_epoch = resume_from.get("best_epoch")
        if start_step and resume_from.get("world_size", 1) != dist.world_size:
            log.warning("the interrupted epoch ran with another world size; it restarts from its beginning")
            start_step = 0
        if start_step:
            partial_sums = torch.tensor(resume_from["partial"]["sums"], dtype=torch.float64)
            partial_seconds = float(resume_from["partial"]["seconds"])
        _set_rng_state(resume_from["rng"], offset=dist.rank)
        log.info("resumed %s at epoch %d, step %d; training to epoch %d", run_dir, start_epoch, start_step, cfg.epochs)
        if start_epoch >= cfg.epochs:
            raise ValueError(
                f"{run_dir / 'last.pt'} has already completed {start_epoch} epochs; pass --epochs N with "
                f"N > {start_epoch} to train further"
            )
    raw_model = model
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist.is_main:
        _write_run_info(run_dir, cfg, class_names, dist, device, amp_dtype, channels_last, workers, bundle)
    tensorboard = _tensorboard_writer(run_dir) if dist.is_main else None

    def checkpoint(**extra: Any) -> dict[str, Any]:
        return make_checkpoint(raw_model, cfg.model, class_names, preprocessing, {}, config=cfg.to_dict(), **extra)

    def save_last(epoch: int, step: int, sums: Tensor, seconds: float) -> None:
        state = checkpoint(
            epoch=epoch,
            step=step,
            partial={"sums": sums.tolist(), "seconds": seconds},
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(),
            rng=_rng_state(),
            history=history,
            best_val_acc=best_val_acc,
            best_epoch=best_epoch,
            world_size=dist.world_size,
        )
        save_checkpoint(run_dir / "last.pt", state)

    # ---- the loop
    stopped, message = None, ""
    stop.arm()
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    for epoch in range(start_epoch, cfg.epochs):
        first_step = start_step if epoch == start_epoch else 0
        train_sampler.set_epoch(epoch, skip=first_step * cfg.batch_size)
        set_train_mode(raw_model, cfg.freeze_backbone)
        sums = partial_sums.clone() if first_step else torch.zeros(3, dtype=torch.float64)  # loss, correct, n
        seconds_before = partial_seconds if first_step else 0.0
        started = time.perf_counter()
        step, lr = first_step, optimizer.param_groups[0]["lr"]
        bar = _progress(steps_per_epoch, first_step, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and dist.is_main)
        for images, targets in train_loader:
            images = normalize(images.to(device, non_blocking=True, memory_format=memory_format))
            targets = targets.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            loss = criterion(logits.float(), targets)
            # Every rank learns each step whether any rank saw a NaN or got a stop signal, so all stop together.
            votes = torch.stack([loss.detach().float(), torch.tensor(float(stop.count), device=device)])
            loss_sum, stop_votes = dist.sum(votes).tolist()
            if not math.isfinite(loss_sum):
                stopped = "diverged"
                kept = f"{run_dir / 'last.pt'} keeps epoch {epoch}" if epoch else "no checkpoint was written"
                message = (
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training stopped; {kept}. "
                    f"Try a lower --lr, --amp none, or check the data"
                )
                break
            if stop_votes > 0:
                stopped = "interrupted"
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            with torch.no_grad():
                correct = (logits.argmax(1) == targets).sum()
            batch = torch.tensor([loss.item() * len(targets), correct.item(), len(targets)], dtype=torch.float64)
            sums += batch
            if bar is not None:
                elapsed = seconds_before + time.perf_counter() - started
                bar.set_postfix(
                    loss=f"{sums[0] / sums[2]:.3f}",
                    acc=f"{sums[1] / sums[2]:.3f}",
                    img_s=f"{sums[2] * dist.world_size / max(elapsed, 1e-9):.0f}",
                    refresh=False,
                )
                bar.update()
        if bar is not None:
            bar.close()
        train_seconds = seconds_before + time.perf_counter() - started
        if stopped == "diverged":
            break
        if stopped == "interrupted":
            if dist.is_main:
                save_last(epoch, step, sums, train_seconds)
            message = (
                f"stopped by a signal at epoch {epoch + 1}, step {step}/{steps_per_epoch}; "
                f"{run_dir / 'last.pt'} is saved there: continue with --resume"
            )
            break

        # ---- validation (each rank a shard, summed), metrics, checkpoints
        train_loss, train_correct, train_count = dist.sum(sums).tolist()
        dist.broadcast_buffers(raw_model)  # validate (and save) rank 0's BatchNorm statistics on every rank
        val = _evaluate_shards(raw_model, val_loader, class_names, device, amp_dtype, memory_format, normalize, dist)
        epoch_seconds = seconds_before + time.perf_counter() - started
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss / train_count,
            "train_acc": train_correct / train_count,
            "val_loss": val.loss,
            "val_acc": val.top1,
            "val_top5": val.top5,
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "train_img_per_s": train_count / train_seconds,
        }
        history.append(row)
        improved = row["val_acc"] > best_val_acc
        if improved:
            best_val_acc, best_epoch = row["val_acc"], epoch + 1
        if dist.is_main:
            write_metrics_csv(run_dir / "metrics.csv", history)
            save_last(epoch + 1, 0, torch.zeros(3, dtype=torch.float64), 0.0)
            if improved:
                best = checkpoint(epoch=epoch + 1, val_acc=val.top1, val_top5=val.top5, val_loss=val.loss)
                save_checkpoint(run_dir / "best.pt", best)
            if tensorboard is not None:
                for key in METRIC_COLUMNS[1:]:
                    tensorboard.add_scalar(key, row[key], epoch + 1)
                tensorboard.flush()
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f top5 %.4f | lr %.3g | %.1f s, %.0f img/s%s",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["train_acc"],
            row["val_loss"],
            row["val_acc"],
            row["val_top5"],
            lr,
            epoch_seconds,
            row["train_img_per_s"],
            "  (best)" if improved else "",
        )
        if dist.sum(torch.tensor([stop.count], device=device)).item() > 0 and epoch + 1 < cfg.epochs:
            stopped = "interrupted"
            message = f"stopped by a signal after epoch {epoch + 1}; continue with --resume"
            break

    # ---- plots: curves, and the confusion matrix of the best checkpoint on the validation set
    if tensorboard is not None:
        tensorboard.close()
    if dist.is_main and history:
        from shufflenet.plots import plot_curves

        plot_curves(history, run_dir / "result.png")
        if stopped != "interrupted" and (run_dir / "best.pt").is_file():
            raw_model.load_state_dict(load_checkpoint(run_dir / "best.pt")["state_dict"])
            full_val = DataLoader(val_data, batch_size=cfg.batch_size, **loader_options)
            result = evaluate(
                raw_model,
                full_val,
                class_names,
                device=device,
                amp=amp_dtype,
                channels_last=channels_last,
                batch_transform=normalize,
            )
            write_confusion(result, run_dir)
    if stopped == "diverged":
        log.error(message)
    elif stopped:
        log.warning(message)
    return TrainResult(
        run_dir=run_dir,
        history=history,
        best_epoch=best_epoch,
        best_val_acc=best_val_acc if best_epoch is not None else None,
        stopped=stopped,
        message=message,
        world_size=dist.world_size,
        skipped=list(bundle.skipped),
    )


def train_transform(preprocessing: Preprocessing, crop_scale: float = 0.08, hflip: bool = True) -> T.Transform:
    """Training augmentation to a uint8 tensor: RandomResizedCrop(scale=(crop_scale, 1)), optional flip.

    Images stay uint8 until :func:`batch_normalizer` turns whole batches into the model's input: converting
    and normalising image by image costs more than decoding a photo (docs/training.md).
    """
    steps: list[T.Transform] = [
        T.ToImage(),
        T.RandomResizedCrop(
            preprocessing.crop_size,
            scale=(crop_scale, 1.0),
            interpolation=T.InterpolationMode(preprocessing.interpolation),
            antialias=True,
        ),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def eval_transform(preprocessing: Preprocessing) -> T.Transform:
    """Validation resize + centre crop to a uint8 tensor (normalised per batch by :func:`batch_normalizer`)."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(
                preprocessing.resize_size,
                interpolation=T.InterpolationMode(preprocessing.interpolation),
                antialias=True,
            ),
            T.CenterCrop(preprocessing.crop_size),
        ]
    )


def batch_normalizer(preprocessing: Preprocessing) -> Callable[[Tensor], Tensor]:
    """uint8 NCHW batch -> the model's float input, as ``preprocessing.normalize()`` does for one image.

    One multiply-add per element on the whole batch; the memory format of the batch is kept.
    """
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
    scale, shift = preprocessing.pixel_scale / (255.0 * std), -mean / std
    flip = preprocessing.channel_order == "BGR"

    def normalize(images: Tensor) -> Tensor:
        if images.is_floating_point():
            raise TypeError("batch_normalizer expects uint8 images (0-255), got floats")
        if flip:
            images = images.flip(1)
        a, b = scale.to(images.device), shift.to(images.device)
        return torch.addcmul(b, images.float(), a)

    return normalize


def set_train_mode(model: nn.Module, freeze_backbone: bool = False) -> None:
    """Training mode; a frozen backbone stays in eval mode so its BatchNorm statistics do not drift."""
    model.train()
    if freeze_backbone:
        model.eval()
        model.get_classifier().train()


def build_optimizer(
    model: nn.Module, name: str = "adam", lr: float = 1e-4, weight_decay: float | None = None, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the trainable parameters; BatchNorm weights and biases get no weight decay."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    decay = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.Adam(groups, lr=lr)


def lr_factor(step: int, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda (this process's GPU under torchrun), then mps, then cpu; errors for unavailable ones."""
    kind = name.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is available to PyTorch; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available; use --device cpu")
    if kind not in DEVICES:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    return torch.device(kind)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (``None``: full float32)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}; got {mode!r}")
    if mode == "none":
        return None
    if mode == "fp16":
        if device.type == "cpu":
            raise ValueError("--amp fp16 needs a GPU; on a CPU use --amp bf16 or --amp none")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs, even with native bf16 (AVX-512 BF16), bf16 autocast measured slower end to end than
    # float32 with channels_last, and its first epoch pays for new kernels (docs/training.md).
    return None


def resolve_workers(workers: int | None, device: torch.device, cached: bool = False) -> int:
    """DataLoader worker processes: as given, else picked for the device and whether images are cached."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        # Loader processes take cores from the model's own threads; with decoded images cached the main
        # process keeps up, otherwise a quarter of the cores decode (docs/training.md has the measurements).
        return 0 if cached else cores // 4
    return max(1, min(8, cores - 1))


def _loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        options.update(persistent_workers=True, worker_init_fn=_ignore_stop_signals)
    return options


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process stops cleanly and then ends the workers,
    # which would otherwise die first and turn a clean stop into "worker exited unexpectedly".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch can start part-way through (resuming an interrupted epoch)."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class CachedImages(Dataset):
    """A dataset whose images are decoded and resized once (shorter side ``size``), then kept in memory.

    Decoding a photo costs about as much as a training step of a small model on a CPU. The random crops are
    taken from the resized image (the one the validation transform also starts from), so the augmentation
    is the same up to resampling. Filled by threads before the loaders start, so forked workers share it.
    """

    def __init__(self, dataset: ImageFolderDataset, size: int, threads: int = 4) -> None:
        self.dataset = dataset
        self.size = size
        self.images: list[Tensor | None] = [None] * len(dataset)
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without holding the GIL
            self.images = list(pool.map(self._decode, range(len(dataset))))

    def _decode(self, index: int) -> Tensor | None:
        try:
            image = load_image(self.dataset.samples[index][0], draft_size=self.size)
        except BadImageError:
            return None  # the wrapped dataset replaces it (and warns) when it is asked for
        return T.functional.resize(T.functional.pil_to_tensor(image), self.size, antialias=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if image is None:
            return self.dataset[index]
        transform = self.dataset.transform
        return (transform(image) if transform is not None else image), self.dataset.samples[index][1]


def _maybe_cache(choice: bool | None, dataset: ImageFolderDataset, pre: Preprocessing, budget: int) -> Dataset:
    """``dataset`` wrapped in :class:`CachedImages` when asked, or (``choice`` None) when it fits ``budget`` bytes."""
    estimate = len(dataset) * 3 * pre.resize_size * round(pre.resize_size * 4 / 3)  # 4:3 photos
    if choice is False or (choice is None and estimate > budget):
        return dataset
    return CachedImages(dataset, pre.resize_size, threads=min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------- evaluation


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
    sums, confusion = _eval_sums(model, loader, len(names), device, amp, memory_format, batch_transform, progress)
    return _eval_result(sums, confusion, names)


def _evaluate_shards(
    model: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format,
    batch_transform: Callable[[Tensor], Tensor],
    dist: _Distributed,
) -> EvalResult:
    sums, confusion = _eval_sums(model, loader, len(class_names), device, amp, memory_format, batch_transform, False)
    return _eval_result(dist.sum(sums), dist.sum(confusion), class_names)


def _eval_sums(
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
    bar = _progress(len(loader), 0, "eval", progress)
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


def _eval_result(sums: Tensor, confusion: Tensor, class_names: list[str]) -> EvalResult:
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


# --------------------------------------------------------------------------------------------- prediction


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


# --------------------------------------------------------------------------------------------- run folder


def _check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} exists and is not a folder; pass another --out")
    if run_dir.is_dir() and not overwrite and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace its "
            f"files, or another --out"
        )


def _prepare_run_dir(run_dir: Path, clean: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if clean:
        # split.json stays, so a rerun over the same data sees the same split.
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink()


def _read_last_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist; start the run without --resume")
    checkpoint = load_checkpoint(path)
    for key in ("config", "optimizer", "scheduler", "epoch", "rng"):
        if key not in checkpoint:
            raise CheckpointError(f"--resume: {path} has no {key!r}; it is not a last.pt written by shufflenet train")
    return checkpoint


def _resumed_config(checkpoint: dict[str, Any], cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, list[str]]:
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


def _check_same_classes(checkpoint: dict[str, Any], class_names: list[str], path: Path, data: str) -> None:
    saved = list(checkpoint.get("class_names") or [])
    if saved != class_names:
        raise ValueError(
            f"{path} was trained on classes {saved}, but {data} has {class_names}; resume with the same data"
        )


def _write_run_info(
    run_dir: Path,
    cfg: TrainConfig,
    class_names: list[str],
    dist: _Distributed,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    workers: int,
    bundle: Any,
) -> None:
    import torchvision

    from shufflenet import __version__

    info = {
        "options": cfg.to_dict(),
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
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(Path(path), buffer.getvalue())


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        log.debug("tensorboard is not installed; no event files")
        return None
    return SummaryWriter(log_dir=str(run_dir))


@contextlib.contextmanager
def _log_to_file(path: Path | None) -> Iterator[None]:
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


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------- processes


@dataclass
class _Distributed:
    """This process's place among torchrun's processes (a single process when not under torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_name: str) -> _Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name, local_rank)
        if world_size == 1:
            return cls(device=device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend)
        return cls(device=device, rank=torch_dist.get_rank(), world_size=world_size, backend=backend)

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over all processes (returned on the CPU)."""
        if self.world_size == 1:
            return tensor.detach().cpu()
        # nccl reduces GPU tensors, gloo CPU ones.
        work = tensor.detach().to(self.device if self.backend == "nccl" else "cpu").clone()
        torch_dist.all_reduce(work)
        return work.cpu()

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
        if self.world_size > 1:
            for buffer in model.buffers():
                torch_dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


class _StopRequest:
    """SIGINT/SIGTERM, once armed, ask the loop to stop after the current step; a second SIGINT stops at once.

    SIGTERM never aborts: torchrun follows a Ctrl-C with SIGTERM to every rank, and a scheduler's SIGTERM
    comes with a grace period, which the clean stop fits in.
    """

    def __init__(self) -> None:
        self.count = 0
        self.interrupts = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt

    def arm(self) -> None:
        """Catch the signals from now on (before, Ctrl-C interrupts set-up at once)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Restore the previous handlers on exit, if :meth:`arm` was called."""
        try:
            yield
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}


# --------------------------------------------------------------------------------------------- randomness


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any], offset: int = 0) -> None:
    if offset:  # other ranks: a distinct but reproducible stream
        _seed_everything(int(state["torch"][:8].sum().item()) + offset)
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
