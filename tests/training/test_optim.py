"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import pytest

from shufflenet.models import create_model
from shufflenet.training.optim import build_optimizer, lr_factor


def test_schedule_and_optimizer_groups() -> None:
    assert [lr_factor(s, "constant", 2, 10) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, "cosine", 2, 10) == pytest.approx(1.0)
    assert lr_factor(6, "cosine", 2, 10) == pytest.approx(0.5)
    assert lr_factor(10, "cosine", 2, 10) == pytest.approx(0.0)
    model = create_model("shufflenet_v2_x0_5", num_classes=3)
    optimizer = build_optimizer(model, "sgd", 0.1, 4e-5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
