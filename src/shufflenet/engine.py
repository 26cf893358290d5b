"""Backwards-compatible names: the training engine now lives in :mod:`shufflenet.training`, evaluation and
prediction in :mod:`shufflenet.evaluation`, devices in :mod:`shufflenet.devices`, transforms in
:mod:`shufflenet.transforms`. New code imports from those modules.
"""

from __future__ import annotations

from shufflenet.devices import resolve_amp, resolve_device
from shufflenet.evaluation import (
    EvalResult,
    Logits,
    Prediction,
    PredictResult,
    evaluate,
    load_eval_dataset,
    predict,
    write_confusion,
)
from shufflenet.training import (
    AMP_MODES,
    DEFAULT_WEIGHT_DECAY,
    DEVICES,
    METRIC_COLUMNS,
    OPTIMIZERS,
    RUN_FILES,
    RUNTIME_OPTIONS,
    SCHEDULES,
    SPLIT_FILE,
    TrainConfig,
    TrainResult,
    set_train_mode,
    train,
    write_metrics_csv,
)
from shufflenet.training.loaders import CACHE_BUDGET, CachedImages, resolve_workers
from shufflenet.training.optim import build_optimizer
from shufflenet.transforms import batch_normalizer, eval_transform, train_transform

__all__ = [
    "AMP_MODES",
    "CACHE_BUDGET",
    "DEFAULT_WEIGHT_DECAY",
    "DEVICES",
    "METRIC_COLUMNS",
    "OPTIMIZERS",
    "RUNTIME_OPTIONS",
    "RUN_FILES",
    "SCHEDULES",
    "SPLIT_FILE",
    "CachedImages",
    "EvalResult",
    "Logits",
    "PredictResult",
    "Prediction",
    "TrainConfig",
    "TrainResult",
    "batch_normalizer",
    "build_optimizer",
    "eval_transform",
    "evaluate",
    "load_eval_dataset",
    "predict",
    "resolve_amp",
    "resolve_device",
    "resolve_workers",
    "set_train_mode",
    "train",
    "train_transform",
    "write_confusion",
    "write_metrics_csv",
]
