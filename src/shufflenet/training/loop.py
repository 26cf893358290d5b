"""The training loop, top to bottom like nanoGPT's ``train.py``.

:func:`train` checks the options, joins torchrun's processes (DDP when its environment variables are set) and
prepares the run folder; :func:`_train_in_run_dir` is the loop itself: data -> model -> optimizer -> resume ->
epochs of (train steps, validation, checkpoints) -> plots. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shufflenet.checkpoints import load_pretrained, make_checkpoint, save_checkpoint
from shufflenet.data.shards import is_shard_dir
from shufflenet.devices import resolve_amp
from shufflenet.evaluation import EvalResult, eval_result, eval_sums, progress_bar
from shufflenet.models import create_model
from shufflenet.training import run_folder
from shufflenet.training.augment import batch_mixer, hard_labels
from shufflenet.training.config import TrainConfig
from shufflenet.training.device_input import check_pipeline
from shufflenet.training.distributed import Distributed
from shufflenet.training.elastic import resolve_auto_resume
from shufflenet.training.ema import build_ema, ema_state, restore_ema
from shufflenet.training.loaders import TrainData, build_data
from shufflenet.training.optim import build_optimizer, build_scheduler
from shufflenet.training.recipes import FitRun, plan_run
from shufflenet.training.shard_data import build_shard_data
from shufflenet.training.signals import StopRequest
from shufflenet.training.state import (
    ResumePoint,
    last_checkpoint,
    rank_states,
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
    check_pipeline(cfg.input_pipeline, dist.device, cfg.data)  # before the run folder: gpu-decode needs CUDA
    # The run folder is checked by every rank before rank 0 writes into it.
    run_dir = Path(cfg.out)
    cfg, auto_notes = resolve_auto_resume(cfg, run_dir, explicit)  # --resume auto, torchrun restarts
    resume_from, ignored, fit = None, [], None
    if cfg.resume:
        resume_from = read_last_checkpoint(run_dir)
        cfg, ignored = resumed_config(resume_from, cfg, explicit)  # keeps the run's recipe and its values
    else:
        # image size from the images; batch, epochs and regularisation for the training set and the budget,
        # once the data module has listed the files (fit)
        fit = plan_run(cfg, explicit, dist.device)
        run_folder.check_new_run_dir(run_dir, cfg.overwrite)
    notes = auto_notes
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


@dataclass
class _Run:
    """What the epochs work with, built once: options, where things run, the data and the objects that learn."""

    cfg: TrainConfig
    run_dir: Path
    dist: Distributed
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    data: TrainData
    model: nn.Module  # the network itself (what checkpoints hold); ``ddp_model`` wraps it under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    ema: nn.Module | None
    steps_per_epoch: int
    ddp_model: nn.Module | None = None  # what the steps call: DDP's wrapper and/or torch.compile's, when used

    @property
    def objects(self) -> dict[str, Any]:
        """What last.pt saves and --resume loads (besides the EMA)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    def checkpoint(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """A self-describing checkpoint of ``model`` (the network or its EMA) with this run's description."""
        described = {
            "arch": self.cfg.model,
            "class_names": self.data.class_names,
            "preprocessing": self.data.preprocessing,
        }
        return make_checkpoint(
            model, **described, model_kwargs=model_kwargs(self.cfg), config=self.cfg.to_dict(), **extra
        )


@dataclass
class _EpochSteps:
    """How an epoch's training steps ended: at ``step``, with (loss, correct, n) ``sums`` and the last lr."""

    step: int
    sums: torch.Tensor
    lr: float
    seconds: float
    stopped: str | None = None  # "interrupted" or "diverged"
    message: str = ""


def _train_in_run_dir(
    cfg: TrainConfig,
    run_dir: Path,
    resume_from: dict[str, Any] | None,
    split_existed: bool,
    dist: Distributed,
    stop: StopRequest,
    fit: FitRun | None = None,
) -> TrainResult:
    amp_dtype = resolve_amp(cfg.amp, dist.device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else dist.device.type in ("cpu", "cuda")
    _log_setup(dist, amp_dtype, channels_last)
    seed_everything(cfg.seed + dist.rank)

    # ---- data
    data = (build_shard_data if is_shard_dir(cfg.data) else build_data)(cfg, dist, run_dir, split_existed, fit)
    cfg = data.config

    # ---- model, optimizer, schedule
    run = _build_run(cfg, run_dir, data, dist, amp_dtype, channels_last, pretrained=resume_from is None)

    # ---- resume: weights, optimizer, schedule, RNG, history and a partly done epoch, from last.pt
    at = ResumePoint()
    if resume_from is not None:
        at = restore(resume_from, run_dir, cfg, data.class_names, run.objects, dist, run.steps_per_epoch)
        restore_ema(run.ema, resume_from, run.model)
    history, best_val_acc, best_epoch = at.history, at.best_val_acc, at.best_epoch
    if dist.world_size > 1:
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        run.ddp_model = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    if cfg.compile:  # the steps call the compiled module; checkpoints and validation use the plain one
        run.ddp_model = torch.compile(run.model if run.ddp_model is None else run.ddp_model)
    if dist.is_main:
        run_folder.write_run_info(
            run_dir, cfg, data.class_names, dist, dist.device, amp_dtype, channels_last, data.workers, data.bundle
        )
    tensorboard = run_folder.tensorboard_writer(run_dir) if dist.is_main else None

    # ---- epochs of (train steps, validation, checkpoints)
    stopped, message = None, ""
    stop.arm()
    for epoch in range(at.epoch, cfg.epochs):
        resumed_mid_epoch = epoch == at.epoch and at.step > 0
        start = at if resumed_mid_epoch else ResumePoint(epoch, 0, history, best_val_acc, best_epoch)
        steps = _train_steps(run, epoch, start, stop)
        if steps.stopped == "diverged":
            stopped, message = steps.stopped, steps.message
            break
        if steps.stopped == "interrupted":
            _save_last(
                run, ResumePoint(epoch, steps.step, history, best_val_acc, best_epoch, steps.sums, steps.seconds)
            )
            stopped, message = steps.stopped, steps.message
            break

        # validation (each rank a shard, summed), metrics, checkpoints
        row, val = _validate(run, epoch, steps)
        row["bad_images"] = run.data.train_loader.check_bad_images()  # unreadable files met so far, each replaced
        improved = row["val_acc"] > best_val_acc
        if dist.is_main:
            _save_best(run, epoch, row, val, history, improved)
        history.append(row)
        if improved:
            best_val_acc, best_epoch = row["val_acc"], epoch + 1
        _save_last(run, ResumePoint(epoch + 1, 0, history, best_val_acc, best_epoch))
        if dist.is_main:
            run_folder.record_epoch(run_dir, history, tensorboard)
        run_folder.log_epoch(row, cfg.epochs, improved)
        if dist.sum(torch.tensor([stop.count], device=dist.device)).item() > 0 and epoch + 1 < cfg.epochs:
            stopped = "interrupted"
            message = f"stopped by a signal after epoch {epoch + 1}; continue with --resume"
            break

    # ---- plots: curves, and the confusion matrix of the best checkpoint on the validation set
    if tensorboard is not None:
        tensorboard.close()
    if dist.is_main and history:
        _write_plots(cfg, run_dir, history, run.model, data, stopped, dist.device, amp_dtype, channels_last)
    if stopped:
        (log.error if stopped == "diverged" else log.warning)(message)
    best = best_val_acc if best_epoch is not None else None
    return TrainResult(run_dir, history, best_epoch, best, stopped, message, dist.world_size, list(data.bundle.skipped))


def _build_run(
    cfg: TrainConfig,
    run_dir: Path,
    data: TrainData,
    dist: Distributed,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    pretrained: bool,
) -> _Run:
    """The model on its device, optimizer, per-step schedule, grad scaler, loss, batch mixer and EMA."""
    steps_per_epoch, num_classes = len(data.train_loader), len(data.class_names)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = _build_model(cfg, num_classes, pretrained=pretrained, dist=dist)
    model.to(dist.device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.schedule, warmup_steps, cfg.epochs * steps_per_epoch)
    return _Run(
        cfg=cfg,
        run_dir=run_dir,
        dist=dist,
        amp_dtype=amp_dtype,
        memory_format=memory_format,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(dist.device.type, enabled=amp_dtype is torch.float16),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),  # also takes mixed (soft) targets
        mixer=batch_mixer(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes),
        ema=build_ema(model, cfg.ema_epochs, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
    )


def _train_steps(run: _Run, epoch: int, at: ResumePoint, stop: StopRequest) -> _EpochSteps:
    """One epoch's training steps from ``at.step`` (with ``at.sums`` so far), until its end, a stop or a NaN."""
    cfg, dist, data, device = run.cfg, run.dist, run.data, run.dist.device
    steps_per_epoch = run.steps_per_epoch
    data.sampler.set_epoch(epoch, skip=at.step * cfg.batch_size)
    set_train_mode(run.model, cfg.freeze_backbone)
    model = run.model if run.ddp_model is None else run.ddp_model
    autocast = partial(torch.autocast, device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)
    check_every = cfg.check_every or (1 if device.type == "cpu" else 16)
    done = _EpochSteps(at.step, at.sums.clone(), run.optimizer.param_groups[0]["lr"], at.seconds)
    started = time.perf_counter()
    bar = progress_bar(steps_per_epoch, at.step, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and dist.is_main)
    pending, counts = [], []  # (loss, correct) on the device and batch sizes, per step since the last check
    saved_at = at.step  # the step of the last mid-epoch last.pt (--checkpoint-every)
    for images, targets in data.train_loader:
        images = data.normalize(images.to(device, non_blocking=True, memory_format=run.memory_format))
        targets = targets.to(device, non_blocking=True)
        if run.mixer is not None:  # soft targets (N, classes)
            images, targets = run.mixer(images, targets)
            images = images.contiguous(memory_format=run.memory_format)
        with autocast():
            logits = model(images)
        loss = run.criterion(logits.float(), targets)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        done.lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        done.step += 1
        correct = (logits.detach().argmax(1) == hard_labels(targets)).sum()
        pending.append(torch.stack([loss.detach().float(), correct.float()]))
        counts.append(len(targets))
        if done.step % check_every and done.step < steps_per_epoch:
            continue
        # Every check_every steps (one host sync) the ranks agree whether any saw a NaN or got a stop
        # signal, so all stop together, after the step in flight; the epoch's last step is always checked.
        bad_step, stop_votes = _check(pending, counts, done.sums, done.step, stop, dist)
        _update_bar(bar, done.sums, at.seconds + time.perf_counter() - started, dist.world_size, len(counts))
        pending, counts = [], []
        if bad_step is not None:
            done.stopped, done.message = "diverged", _diverged_message(bad_step, epoch, run.run_dir)
            break
        if stop_votes > 0 and done.step < steps_per_epoch:
            done.stopped = "interrupted"
            done.message = _interrupted_message(epoch, done.step, steps_per_epoch, run.run_dir)
            break
        if cfg.checkpoint_every and done.step - saved_at >= cfg.checkpoint_every and done.step < steps_per_epoch:
            # Bounds the steps a killed process loses; every rank reaches this step (the sums are complete here).
            saved_at = done.step
            seconds = at.seconds + time.perf_counter() - started
            point = ResumePoint(epoch, done.step, at.history, at.best_val_acc, at.best_epoch, done.sums, seconds)
            _save_last(run, point)
    if bar is not None:
        bar.close()
    done.seconds = at.seconds + time.perf_counter() - started
    return done


def _validate(run: _Run, epoch: int, steps: _EpochSteps) -> tuple[dict[str, float], EvalResult]:
    """The epoch's metrics.csv row (training sums and validation of every rank's shard, summed) and validation."""
    started = time.perf_counter()
    train_sums = tuple(run.dist.sum(steps.sums).tolist())
    run.dist.broadcast_buffers(run.model)  # validate (and save) rank 0's BatchNorm statistics on every rank
    shards = (run.data, run.dist.device, run.amp_dtype, run.memory_format, run.dist)
    val = _evaluate_shards(run.model, *shards)
    seconds = (steps.seconds + time.perf_counter() - started, steps.seconds)
    row = _epoch_row(epoch + 1, train_sums, val, steps.lr, seconds)
    if run.ema is not None:
        run.dist.broadcast_buffers(run.ema)  # rank 0's EMA, the one best_ema.pt saves, on every shard
        ema_val = _evaluate_shards(run.ema.module, *shards)
        row.update(val_loss_ema=ema_val.loss, val_acc_ema=ema_val.top1)
    return row, val


def _save_best(
    run: _Run, epoch: int, row: dict[str, float], val: EvalResult, earlier: list[dict[str, float]], improved: bool
) -> None:
    """best.pt when the validation accuracy improved, best_ema.pt when the EMA's did (rank 0 calls this)."""
    if improved:
        best = run.checkpoint(run.model, epoch=epoch + 1, val_acc=val.top1, val_top5=val.top5, val_loss=val.loss)
        save_checkpoint(run.run_dir / "best.pt", best)
    best_ema_before = max((r.get("val_acc_ema", -1.0) for r in earlier), default=-1.0)
    if run.ema is not None and row["val_acc_ema"] > best_ema_before:
        best_ema = run.checkpoint(run.ema, ema=True, epoch=epoch + 1, val_acc=row["val_acc_ema"])
        save_checkpoint(run.run_dir / "best_ema.pt", best_ema)


def _save_last(run: _Run, point: ResumePoint) -> None:
    """last.pt: the run's state at ``point``, every rank's RNG (all ranks call this; rank 0 writes)."""
    ranks = rank_states(point, run.dist)
    if run.dist.is_main:
        last = last_checkpoint(run.checkpoint(run.model), run.objects, point, ranks)
        save_checkpoint(run.run_dir / "last.pt", {**last, **ema_state(run.ema)})


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
    # best.pt is evaluated in a copy: the trained model stays as the last step left it (on every rank).
    run_folder.write_plots(run_dir, history, copy.deepcopy(model), full_val, data.class_names, **eval_options)


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
