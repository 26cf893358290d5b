"""Optimizers (no weight decay on BatchNorm and biases) and the per-step learning-rate schedule."""

from __future__ import annotations

import math
from functools import partial

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


def lr_factor(step: int, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    factor = partial(lr_factor, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
