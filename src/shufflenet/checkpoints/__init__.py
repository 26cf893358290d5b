"""Checkpoint files: safe reading and saving, loading weights into models, and other projects' formats.

* :mod:`~shufflenet.checkpoints.files`: read (``torch.load(weights_only=True)`` or safetensors), atomic save,
  our self-describing checkpoint (:func:`make_checkpoint`, :func:`load_checkpoint`).
* :mod:`~shufflenet.checkpoints.loading`: :func:`load_pretrained` (any supported file into a built model, the
  loader behind ``create_model(name, weights=...)``) and :func:`load_model` (our checkpoint as a model).
* :mod:`~shufflenet.checkpoints.formats`: one module per foreign layout (torchvision, megvii, mmpretrain),
  registered as :class:`FormatAdapter` s; :mod:`~shufflenet.checkpoints.convert` turns a foreign file into ours.
* :mod:`~shufflenet.checkpoints.pretrained`: the published ImageNet weights as data (URL, sha256 prefix,
  accuracy, preprocessing, licence); :mod:`~shufflenet.checkpoints.hub` downloads, checks, caches and loads
  them, and installs the loader behind ``create_model(name, weights=...)`` and ``pretrained=True``.
"""

from __future__ import annotations

from shufflenet.checkpoints.adapters import FormatAdapter, register_adapter, registered_adapters
from shufflenet.checkpoints.convert import SOURCES, convert_checkpoint, detect_layout, infer_model_name
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
from shufflenet.checkpoints.formats.v1_shuffle import ShuffleOrderError
from shufflenet.checkpoints.hub import (
    MIRROR_ENV,
    WeightsDownloadError,
    download_weights,
    is_weights_name,
    load_named_weights,
    pretrained_checkpoint,
)
from shufflenet.checkpoints.loading import CLASSIFIER_PREFIXES, LoadReport, load_model, load_pretrained
from shufflenet.checkpoints.pretrained import WEIGHTS, PretrainedWeights, find_weights, weights_of

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CLASSIFIER_PREFIXES",
    "MIRROR_ENV",
    "SOURCES",
    "WEIGHTS",
    "CheckpointError",
    "FormatAdapter",
    "LoadReport",
    "PretrainedWeights",
    "ShuffleOrderError",
    "WeightsDownloadError",
    "convert_checkpoint",
    "detect_layout",
    "download_weights",
    "find_weights",
    "infer_model_name",
    "is_weights_name",
    "load_checkpoint",
    "load_model",
    "load_named_weights",
    "load_pretrained",
    "make_checkpoint",
    "pretrained_checkpoint",
    "read_file",
    "register_adapter",
    "registered_adapters",
    "save_checkpoint",
    "unwrap_state_dict",
    "weights_of",
]
