"""Optimizers (no weight decay on BatchNorm and biases) and the per-step learning-rate schedule."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from shufflenet.training.config import DEFAULT_WEIGHT_DECAY, OPTIMIZERS


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning rate: a linear warm-up to the optimizer's lr over ``warmup_steps`` (step k gets
    (k+1)/warmup_steps of it), then constant, or cosine or linear decay to zero at ``total_steps``."""
    lr_scheduler = torch.optim.lr_scheduler
    phases, milestones = [], []
    if warmup_steps > 0:
        phases.append(lr_scheduler.LinearLR(optimizer, 1 / warmup_steps, 1.0, total_iters=max(1, warmup_steps - 1)))
        milestones.append(warmup_steps)
    decay_steps = max(1, total_steps - max(warmup_steps, 0))
    if schedule == "cosine":
        phases.append(lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps))
    elif schedule == "linear":  # megvii's ShuffleNet schedule
        phases.append(lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=decay_steps))
    else:
        phases.append(lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if len(phases) == 1:
        return phases[0]
    return lr_scheduler.SequentialLR(optimizer, phases, milestones)


# State that moves as the scheduler steps; the rest describes the schedule itself.
_POSITION_KEYS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial", "base_lrs"}


def same_schedule(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a saved scheduler state describes the schedule ``current`` (both state_dicts) does."""

    def described(state: Any) -> Any:
        if isinstance(state, dict):
            return {k: described(v) for k, v in state.items() if k not in _POSITION_KEYS}
        if isinstance(state, list):
            return [described(v) for v in state]
        return state

    return described(saved) == described(current)


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step a new scheduler ``steps`` times: a resumed run whose last.pt holds another schedule (more epochs,
    another world size, or an older last.pt's LambdaLR) continues on its own schedule at its own step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
        for _ in range(steps):
            scheduler.step()
