"""Training: :func:`train` and its options, :class:`TrainConfig`; one module per concern.

``config`` (options), ``loop`` (the loop, top to bottom), ``state`` (what last.pt holds for --resume),
``distributed`` (torchrun processes), ``signals`` (Ctrl-C/SIGTERM), ``run_folder`` (files a run writes),
``loaders`` (data, cache, resumable sampler), ``optim`` (optimizer and schedule).
"""

from __future__ import annotations

from shufflenet.training.config import (
    AMP_MODES,
    DEFAULT_WEIGHT_DECAY,
    DEVICES,
    OPTIMIZERS,
    RUNTIME_OPTIONS,
    SCHEDULES,
    TrainConfig,
)
from shufflenet.training.loop import TrainResult, set_train_mode, train
from shufflenet.training.run_folder import METRIC_COLUMNS, RUN_FILES, SPLIT_FILE, write_metrics_csv

__all__ = [
    "AMP_MODES",
    "DEFAULT_WEIGHT_DECAY",
    "DEVICES",
    "METRIC_COLUMNS",
    "OPTIMIZERS",
    "RUNTIME_OPTIONS",
    "RUN_FILES",
    "SCHEDULES",
    "SPLIT_FILE",
    "TrainConfig",
    "TrainResult",
    "set_train_mode",
    "train",
    "write_metrics_csv",
]
