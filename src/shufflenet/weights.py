"""Backwards-compatible names: checkpoint reading, saving and loading now live in :mod:`shufflenet.checkpoints`."""

from __future__ import annotations

from shufflenet.checkpoints.adapters import FormatAdapter, register_adapter
from shufflenet.checkpoints.files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    read_file,
    save_checkpoint,
    unwrap_state_dict,
)
from shufflenet.checkpoints.loading import CLASSIFIER_PREFIXES, LoadReport, load_model, load_pretrained

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CLASSIFIER_PREFIXES",
    "CheckpointError",
    "FormatAdapter",
    "LoadReport",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "make_checkpoint",
    "read_file",
    "register_adapter",
    "save_checkpoint",
    "unwrap_state_dict",
]
