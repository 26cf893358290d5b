"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from shufflenet.models import create_model
from shufflenet.training.optim import build_optimizer, build_scheduler


def expected_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The documented schedule (docs/training.md), written out: linear warm-up, then the decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize(("warmup_steps", "total_steps"), [(0, 12), (1, 12), (3, 12), (5, 300), (12, 12)])
def test_schedule_follows_warmup_then_decay(schedule: str, warmup_steps: int, total_steps: int) -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scheduler = build_scheduler(optimizer, schedule, warmup_steps, total_steps)
    for step in range(total_steps):
        expected = 0.5 * expected_factor(step, schedule, warmup_steps, total_steps)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_optimizer_groups() -> None:
    model = create_model("shufflenet_v2_x0_5", num_classes=3)
    optimizer = build_optimizer(model, "sgd", 0.1, 4e-5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
