"""Loading weights into models: any supported file into a built model, or our checkpoint as a whole model.

:func:`load_pretrained` is what ``create_model(name, weights=PATH)`` runs (through the loader that
:mod:`~shufflenet.checkpoints.hub` installs), so the models package itself imports no checkpoint code: the
dependency runs checkpoints -> models only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.checkpoints import formats
from shufflenet.checkpoints.adapters import registered_adapters
from shufflenet.checkpoints.files import (
    CHECKPOINT_FORMAT,
    TRAINING_STATE_KEYS,
    CheckpointError,
    load_checkpoint,
    read_file,
    unwrap_state_dict,
)
from shufflenet.models import create_model
from shufflenet.transforms import Preprocessing

CLASSIFIER_PREFIXES = ("fc.",)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: source format, keys re-initialised or ignored."""

    path: str
    source_format: str
    loaded: int
    reinitialized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None

    def summary(self) -> str:
        """One line for logs."""
        text = f"loaded {self.loaded} tensors from {self.path} ({self.source_format})"
        if self.reinitialized:
            text += f"; re-initialised {', '.join(self.reinitialized)} (class count differs)"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} extra keys"
        return text


def match_state_dict(
    state: Mapping[str, Tensor],
    own: Mapping[str, Tensor],
    where: str | Path,
    name: str,
    strict_classifier: bool = False,
    hint: str = "",
) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors of ``state`` that load into a model (``name``) whose state_dict is ``own``, and the classifier
    keys left out because their class count differs (unless ``strict_classifier``).

    Any other missing or mis-shaped key is a CheckpointError naming ``where``, the first bad key, and ``hint``.
    """
    missing = [k for k in own if k not in state and not (k.startswith(CLASSIFIER_PREFIXES) and not strict_classifier)]
    if missing:
        raise CheckpointError(
            f"{where} has no key {missing[0]!r} that {name} needs ({len(missing)} missing); is it a checkpoint "
            f"for another architecture? (its first keys: {list(state)[:3]}){hint}"
        )
    dropped = []
    for key, tensor in own.items():
        if key in state and state[key].shape != tensor.shape:
            if key.startswith(CLASSIFIER_PREFIXES) and not strict_classifier:
                dropped.append(key)
                continue
            raise CheckpointError(
                f"{where}: key {key!r} has shape {tuple(state[key].shape)}, {name} expects {tuple(tensor.shape)}; "
                f"the file is for another architecture or width{hint}"
            )
    return {k: v for k, v in state.items() if k in own and k not in dropped}, dropped


def load_pretrained(model: nn.Module, path: str | Path, strict_classifier: bool = False) -> LoadReport:
    """Load weights from ``path`` into ``model``; the classifier is re-initialised if its class count differs.

    Any other missing or mis-shaped key is an error naming the first bad key.
    """
    state, preprocessing, source = _our_keys(read_file(path), model, path)
    if not state:
        raise CheckpointError(f"{path} contains no tensors")
    report = LoadReport(path=str(path), source_format=source, loaded=0, preprocessing=preprocessing)
    own = model.state_dict()
    load, report.reinitialized = match_state_dict(state, own, path, type(model).__name__, strict_classifier)
    report.ignored = [key for key in state if key not in own]
    missing_classifier = [k for k in own if k.startswith(CLASSIFIER_PREFIXES) and k not in state]
    if report.reinitialized or missing_classifier:
        report.reinitialized = sorted(set(report.reinitialized) | set(missing_classifier))
    model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report


def _our_keys(
    raw: Mapping[str, Any], model: nn.Module, path: str | Path
) -> tuple[dict[str, Tensor], Preprocessing | None, str]:
    """The file's tensors under our keys, its preprocessing (if it records one) and the source format's name."""
    if raw.get("format") == CHECKPOINT_FORMAT:
        for option, value in raw.get("model_kwargs", {}).items():
            if getattr(model, option, value) != value:
                raise CheckpointError(
                    f"{path} was saved from a model built with {option}={value!r}, this one has "
                    f"{option}={getattr(model, option)!r}; build it with create_model(..., {option}={value!r}) "
                    f"or use shufflenet.load_model({str(path)!r})"
                )
        preprocessing = Preprocessing.from_dict(raw["preprocessing"]) if "preprocessing" in raw else None
        return unwrap_state_dict(raw), preprocessing, "shufflenet checkpoint"
    for adapter in registered_adapters():
        if adapter.detect(raw):
            try:
                state, preprocessing = adapter.convert(raw, model)
            except CheckpointError as err:
                if str(path) not in str(err):
                    err.args = (f"{path}: {err}", *err.args[1:])
                raise
            return state, preprocessing, adapter.name
    state, preprocessing = formats.torchvision.convert(raw, model)
    return state, preprocessing, formats.torchvision.NAME


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in one of our checkpoints, in eval mode.

    The model carries ``arch``, ``class_names`` and ``preprocessing`` (a :class:`Preprocessing`).
    """
    checkpoint = load_checkpoint(path)
    try:
        model = create_model(
            checkpoint["arch"], num_classes=checkpoint["num_classes"], **checkpoint.get("model_kwargs", {})
        )
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    state = unwrap_state_dict(checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"{path}: weights do not match {checkpoint['arch']} (first bad key {first!r})")
    model.arch = checkpoint["arch"]
    model.class_names = list(checkpoint.get("class_names") or range(checkpoint["num_classes"]))
    model.preprocessing = Preprocessing.from_dict(checkpoint.get("preprocessing", {}))
    model.checkpoint_meta = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE_KEYS}
    return model.to(device).eval()
