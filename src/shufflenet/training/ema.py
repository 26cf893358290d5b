"""An exponential moving average of the weights (torch.optim.swa_utils.AveragedModel), evaluated each epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["build_ema", "ema_decay", "ema_state", "restore_ema"]


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay whose time constant is ``ema_epochs`` epochs of ``steps_per_epoch`` steps."""
    return 1.0 - 1.0 / max(1.0, ema_epochs * steps_per_epoch)


def build_ema(model: nn.Module, ema_epochs: float, steps_per_epoch: int) -> AveragedModel | None:
    """An EMA copy of ``model`` (weights and BatchNorm statistics), or None when ``ema_epochs`` is 0."""
    if ema_epochs <= 0:
        return None
    decay = ema_decay(ema_epochs, steps_per_epoch)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def ema_state(ema: AveragedModel | None) -> dict[str, Any]:
    """What last.pt keeps of the EMA (nothing without one)."""
    return {} if ema is None else {"ema": ema.state_dict()}


def restore_ema(ema: AveragedModel | None, checkpoint: dict[str, Any], model: nn.Module) -> None:
    """Put back the EMA from last.pt; a last.pt without one (or a run that adds it) starts it from ``model``."""
    if ema is None:
        return
    if "ema" in checkpoint:
        ema.load_state_dict(checkpoint["ema"])
    else:
        with torch.no_grad():
            for averaged, current in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):
                averaged.copy_(current)
