"""The training loop, top to bottom like nanoGPT's ``train.py``.

:func:`train` checks the options, joins torchrun's processes (DDP when its environment variables are set) and
prepares the run folder; :func:`_train_in_run_dir` is the loop itself: data -> model -> optimizer -> resume ->
epochs of (train steps, validation, checkpoints) -> plots. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shufflenet.checkpoints import load_pretrained, make_checkpoint, save_checkpoint
from shufflenet.devices import resolve_amp
from shufflenet.evaluation import EvalResult, eval_result, eval_sums, progress_bar
from shufflenet.models import create_model
from shufflenet.training import run_folder
from shufflenet.training.augment import batch_mixer, hard_labels
from shufflenet.training.config import TrainConfig
from shufflenet.training.distributed import Distributed
from shufflenet.training.ema import build_ema, ema_state, restore_ema
from shufflenet.training.loaders import FitToData, TrainData, build_data
from shufflenet.training.optim import build_optimizer, build_scheduler
from shufflenet.training.recipes import plan_run
from shufflenet.training.signals import StopRequest
from shufflenet.training.state import (
    ResumePoint,
    last_checkpoint,
    read_last_checkpoint,
    restore,
    resumed_config,
    seed_everything,
)

log = logging.getLogger("shufflenet.training")


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


def train(config: TrainConfig | None = None, /, **options: Any) -> TrainResult:
    """Train or fine-tune a model (options as :class:`TrainConfig` / the CLI); returns the per-epoch metrics."""
    if config is not None and options:
        config = dataclasses.replace(config, **options)
    if config is None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; see shufflenet.training.TrainConfig")
        config = TrainConfig(**options)
        explicit = set(options)
    else:
        explicit = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}
    config.validate()
    dist = Distributed.from_environment(config.device)
    stop = StopRequest()
    try:
        with stop.installed():
            return _train(config, explicit, dist, stop)
    finally:
        dist.close()


def _train(cfg: TrainConfig, explicit: set[str], dist: Distributed, stop: StopRequest) -> TrainResult:
    # The run folder is checked by every rank before rank 0 writes into it.
    run_dir = Path(cfg.out)
    resume_from, ignored, notes, fit = None, [], [], None
    if cfg.resume:
        resume_from = read_last_checkpoint(run_dir)
        cfg, ignored = resumed_config(resume_from, cfg, explicit)  # keeps the run's recipe and its values
    else:
        # image size from the images; batch, epochs and regularisation for the training set and the budget
        cfg, notes, fit = plan_run(cfg, explicit, dist.device)
        run_folder.check_new_run_dir(run_dir, cfg.overwrite)
    if cfg.data is None:
        raise ValueError("no data directory given: pass --data DIR")
    split_existed = (run_dir / run_folder.SPLIT_FILE).is_file()
    dist.barrier()
    if dist.is_main:
        run_folder.prepare_run_dir(run_dir, clean=cfg.overwrite)
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with run_folder.log_to_file(run_dir / "train.log" if dist.is_main else None):
            for message in notes:
                log.info(message)
            for message in ignored:
                log.warning(message)
            return _train_in_run_dir(cfg, run_dir, resume_from, split_existed, dist, stop, fit)
    finally:
        torch.set_num_threads(threads)


def _train_in_run_dir(
    cfg: TrainConfig,
    run_dir: Path,
    resume_from: dict[str, Any] | None,
    split_existed: bool,
    dist: Distributed,
    stop: StopRequest,
    fit: FitToData | None = None,
) -> TrainResult:
    device = dist.device
    amp_dtype = resolve_amp(cfg.amp, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    _log_setup(dist, amp_dtype, channels_last)
    seed_everything(cfg.seed + dist.rank)

    # ---- data
    data = build_data(cfg, dist, run_dir, split_existed, fit)
    cfg = data.config
    class_names, normalize, steps_per_epoch = data.class_names, data.normalize, len(data.train_loader)

    # ---- model, optimizer, schedule
    model = _build_model(cfg, len(class_names), pretrained=resume_from is None, dist=dist)
    model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.schedule, warmup_steps, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)  # also takes mixed (soft) targets
    mixer = batch_mixer(cfg.mixup_alpha, cfg.cutmix_alpha, len(class_names))
    ema = build_ema(model, cfg.ema_epochs, steps_per_epoch)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}

    # ---- resume: weights, optimizer, schedule, RNG, history and a partly done epoch, from last.pt
    at = ResumePoint()
    if resume_from is not None:
        at = restore(resume_from, run_dir, cfg, class_names, objects, dist)
        restore_ema(ema, resume_from, model)
    history, best_val_acc, best_epoch = at.history, at.best_val_acc, at.best_epoch
    raw_model = model
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        run_folder.write_run_info(
            run_dir, cfg, class_names, dist, device, amp_dtype, channels_last, data.workers, data.bundle
        )
    tensorboard = run_folder.tensorboard_writer(run_dir) if dist.is_main else None
    described = {"arch": cfg.model, "class_names": class_names, "preprocessing": data.preprocessing}
    checkpoint = partial(make_checkpoint, **described, model_kwargs=model_kwargs(cfg), config=cfg.to_dict())

    def save_last(epoch: int, step: int, sums: torch.Tensor, seconds: float) -> None:
        point = ResumePoint(epoch, step, history, best_val_acc, best_epoch, sums, seconds)
        last = last_checkpoint(checkpoint(raw_model), objects, point, dist.world_size)
        save_checkpoint(run_dir / "last.pt", {**last, **ema_state(ema)})

    # ---- the loop
    stopped, message = None, ""
    stop.arm()
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    check_every = cfg.check_every or (1 if device.type == "cpu" else 16)
    for epoch in range(at.epoch, cfg.epochs):
        first_step = at.step if epoch == at.epoch else 0
        data.sampler.set_epoch(epoch, skip=first_step * cfg.batch_size)
        set_train_mode(raw_model, cfg.freeze_backbone)
        sums = at.sums.clone() if first_step else torch.zeros(3, dtype=torch.float64)  # loss, correct, n
        seconds_before = at.seconds if first_step else 0.0
        started = time.perf_counter()
        step, lr = first_step, optimizer.param_groups[0]["lr"]
        bar = progress_bar(
            steps_per_epoch, first_step, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and dist.is_main
        )
        pending, counts = [], []  # (loss, correct) on the device and batch sizes, per step since the last check
        for images, targets in data.train_loader:
            images = normalize(images.to(device, non_blocking=True, memory_format=memory_format))
            targets = targets.to(device, non_blocking=True)
            if mixer is not None:  # soft targets (N, classes)
                images, targets = mixer(images, targets)
                images = images.contiguous(memory_format=memory_format)
            with autocast():
                logits = model(images)
            loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(raw_model)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            correct = (logits.detach().argmax(1) == hard_labels(targets)).sum()
            pending.append(torch.stack([loss.detach().float(), correct.float()]))
            counts.append(len(targets))
            if step % check_every and step < steps_per_epoch:
                continue
            # Every check_every steps (one host sync) the ranks agree whether any saw a NaN or got a stop
            # signal, so all stop together, after the step in flight; the epoch's last step is always checked.
            bad_step, stop_votes = _check(pending, counts, sums, step, stop, dist)
            _update_bar(bar, sums, seconds_before + time.perf_counter() - started, dist.world_size, len(counts))
            pending, counts = [], []
            if bad_step is not None:
                stopped, message = "diverged", _diverged_message(bad_step, epoch, run_dir)
                break
            if stop_votes > 0 and step < steps_per_epoch:
                stopped = "interrupted"
                break
        if bar is not None:
            bar.close()
        train_seconds = seconds_before + time.perf_counter() - started
        if stopped == "diverged":
            break
        if stopped == "interrupted":
            if dist.is_main:
                save_last(epoch, step, sums, train_seconds)
            message = _interrupted_message(epoch, step, steps_per_epoch, run_dir)
            break

        # ---- validation (each rank a shard, summed), metrics, checkpoints
        train_loss, train_correct, train_count = dist.sum(sums).tolist()
        dist.broadcast_buffers(raw_model)  # validate (and save) rank 0's BatchNorm statistics on every rank
        shards = (data, device, amp_dtype, memory_format, dist)
        val = _evaluate_shards(raw_model, *shards)
        seconds = (seconds_before + time.perf_counter() - started, train_seconds)
        row = _epoch_row(epoch + 1, (train_loss, train_correct, train_count), val, lr, seconds)
        improved_ema = ema is not None and _evaluate_ema(ema, row, history, *shards)
        history.append(row)
        improved = row["val_acc"] > best_val_acc
        if improved:
            best_val_acc, best_epoch = row["val_acc"], epoch + 1
        if dist.is_main:
            run_folder.record_epoch(run_dir, history, tensorboard)
            save_last(epoch + 1, 0, torch.zeros(3, dtype=torch.float64), 0.0)
            if improved:
                best = checkpoint(raw_model, epoch=epoch + 1, val_acc=val.top1, val_top5=val.top5, val_loss=val.loss)
                save_checkpoint(run_dir / "best.pt", best)
            if improved_ema:
                best_ema = checkpoint(ema, ema=True, epoch=epoch + 1, val_acc=row["val_acc_ema"])
                save_checkpoint(run_dir / "best_ema.pt", best_ema)
        run_folder.log_epoch(row, cfg.epochs, improved)
        if dist.sum(torch.tensor([stop.count], device=device)).item() > 0 and epoch + 1 < cfg.epochs:
            stopped = "interrupted"
            message = f"stopped by a signal after epoch {epoch + 1}; continue with --resume"
            break

    # ---- plots: curves, and the confusion matrix of the best checkpoint on the validation set
    if tensorboard is not None:
        tensorboard.close()
    if dist.is_main and history:
        _write_plots(cfg, run_dir, history, raw_model, data, stopped, device, amp_dtype, channels_last)
    if stopped:
        (log.error if stopped == "diverged" else log.warning)(message)
    best = best_val_acc if best_epoch is not None else None
    return TrainResult(run_dir, history, best_epoch, best, stopped, message, dist.world_size, list(data.bundle.skipped))


def _evaluate_ema(
    ema: nn.Module,
    row: dict[str, float],
    history: list[dict[str, float]],
    data: TrainData,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format,
    dist: Distributed,
) -> bool:
    """Validate the EMA weights into ``row`` (val_loss_ema, val_acc_ema); whether they beat every earlier epoch."""
    ema_val = _evaluate_shards(ema.module, data, device, amp_dtype, memory_format, dist)
    best_ema = max((r.get("val_acc_ema", -1.0) for r in history), default=-1.0)
    row.update(val_loss_ema=ema_val.loss, val_acc_ema=ema_val.top1)
    return ema_val.top1 > best_ema


def _interrupted_message(epoch: int, step: int, steps_per_epoch: int, run_dir: Path) -> str:
    """What a run stopped by a signal mid-epoch says."""
    return (
        f"stopped by a signal at epoch {epoch + 1}, step {step}/{steps_per_epoch}; "
        f"{run_dir / 'last.pt'} is saved there: continue with --resume"
    )


def _write_plots(
    cfg: TrainConfig,
    run_dir: Path,
    history: list[dict[str, float]],
    model: nn.Module,
    data: TrainData,
    stopped: str | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> None:
    """result.png, and the confusion matrix of the best checkpoint on the whole validation set (not when stopped)."""
    full_val = None
    if stopped != "interrupted":
        full_val = torch.utils.data.DataLoader(data.val_data, batch_size=cfg.batch_size, **data.loader_options)
    eval_options = {
        "device": device,
        "amp": amp_dtype,
        "channels_last": channels_last,
        "batch_transform": data.normalize,
    }
    run_folder.write_plots(run_dir, history, model, full_val, data.class_names, **eval_options)


def _epoch_row(
    epoch: int, train_sums: tuple[float, float, float], val: EvalResult, lr: float, seconds: tuple[float, float]
) -> dict[str, float]:
    """One metrics.csv row; ``seconds`` are the epoch's and its training part's."""
    train_loss, train_correct, train_count = train_sums
    return {
        "epoch": epoch,
        "train_loss": train_loss / train_count,
        "train_acc": train_correct / train_count,
        "val_loss": val.loss,
        "val_acc": val.top1,
        "val_top5": val.top5,
        "lr": lr,
        "epoch_seconds": seconds[0],
        "train_img_per_s": train_count / seconds[1],
    }


def _log_setup(dist: Distributed, amp_dtype: torch.dtype | None, channels_last: bool) -> None:
    log.info(
        "world size %d (%s), device %s, amp %s, channels_last %s, %d CPU threads",
        dist.world_size,
        dist.backend or "single process",
        dist.device,
        str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        channels_last,
        torch.get_num_threads(),
    )


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The model options of the run beyond its name (checkpoints record them; load_model rebuilds from them)."""
    return {"small_input": True} if cfg.small_input else {}  # none by default: the papers' model, as before


def _build_model(cfg: TrainConfig, num_classes: int, pretrained: bool, dist: Distributed) -> nn.Module:
    """The architecture with ``cfg.weights`` loaded (unless resuming), SyncBatchNorm and frozen backbone if asked."""
    model = create_model(cfg.model, num_classes=num_classes, **model_kwargs(cfg))
    if cfg.small_input:
        log.info("model: %s with the tiny-image stem (small_input: no max-pool, output stride 16)", cfg.model)
    if cfg.sync_bn and dist.world_size > 1:
        if dist.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPUs; drop --sync-bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter names: checkpoints load as usual
    elif cfg.sync_bn:
        log.info("--sync-bn has nothing to do in a single process: BatchNorm already sees the whole batch")
    if cfg.weights and pretrained:
        report = load_pretrained(model, cfg.weights)
        log.info("weights: %s", report.summary())
    if cfg.freeze_backbone:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    return model


def set_train_mode(model: nn.Module, freeze_backbone: bool = False) -> None:
    """Training mode; a frozen backbone stays in eval mode so its BatchNorm statistics do not drift."""
    model.train()
    if freeze_backbone:
        model.eval()
        model.get_classifier().train()


def _check(
    pending: list[torch.Tensor], counts: list[int], sums: torch.Tensor, step: int, stop: StopRequest, dist: Distributed
) -> tuple[tuple[int, float] | None, float]:
    """Add the pending steps' (loss x images, correct, images) to ``sums`` (float64, on the host); return the
    first non-finite loss here as (step, loss), or (0, nan) when only another rank saw one, and the number of
    stop signals all ranks received."""
    rows = torch.stack(pending).cpu().tolist()  # the one host synchronisation
    for (loss, correct), count in zip(rows, counts, strict=True):
        sums += torch.tensor([loss * count, correct, count], dtype=torch.float64)
    first = next((i for i, row in enumerate(rows) if not math.isfinite(row[0])), None)
    bad_ranks, stop_votes = dist.sum(torch.tensor([float(first is not None), float(stop.count)])).tolist()
    bad_step = None
    if first is not None:
        bad_step = (step - len(rows) + first + 1, rows[first][0])
    elif bad_ranks > 0:
        bad_step = (0, math.nan)
    return bad_step, stop_votes


def _diverged_message(bad_step: tuple[int, float], epoch: int, run_dir: Path) -> str:
    kept = f"{run_dir / 'last.pt'} keeps epoch {epoch}" if epoch else "no checkpoint was written"
    step, loss = bad_step
    where = f"at epoch {epoch + 1}, step {step}" if step else f"on another process in epoch {epoch + 1}"
    return f"loss is {loss} {where}: training stopped; {kept}. Try a lower --lr, --amp none, or check the data"


def _update_bar(bar: Any, sums: torch.Tensor, elapsed: float, world_size: int, steps: int) -> None:
    if bar is None:
        return
    bar.set_postfix(
        loss=f"{sums[0] / sums[2]:.3f}",
        acc=f"{sums[1] / sums[2]:.3f}",
        img_s=f"{sums[2] * world_size / max(elapsed, 1e-9):.0f}",
        refresh=False,
    )
    bar.update(steps)


def _evaluate_shards(
    model: nn.Module,
    data: TrainData,
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format,
    dist: Distributed,
) -> EvalResult:
    """Validation of this rank's shard, summed over the ranks."""
    num_classes = len(data.class_names)
    sums, confusion = eval_sums(model, data.val_loader, num_classes, device, amp, memory_format, data.normalize, False)
    return eval_result(dist.sum(sums), dist.sum(confusion), data.class_names)
