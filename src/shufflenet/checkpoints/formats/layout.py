"""A foreign layout described as data (:class:`Layout`) and the generic conversion of its files to our keys.

Both projects' stride-2 v1 units concatenate [avg-pool(x), relu(main)]; we apply the ReLU after the
concatenation, which is the same because every unit input is already non-negative (a ReLU output).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.checkpoints.adapters import FormatAdapter
from shufflenet.checkpoints.files import CheckpointError, unwrap_state_dict
from shufflenet.checkpoints.formats.v1_shuffle import relabel_v1
from shufflenet.models import ShuffleNetV1, ShuffleNetV2, ShuffleNetV2Plus, list_models, width_suffix
from shufflenet.models.v1 import stage_channels
from shufflenet.transforms import Preprocessing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """One foreign layout: how to recognise it, map keys, and what the file's shapes say it is."""

    name: str
    source: str
    family: str  # "shufflenet_v1" / "shufflenet_v2" / "shufflenet_v2_plus"
    marker: Callable[[Mapping[str, Tensor]], bool]
    key: Callable[[str], str | None]  # our key -> theirs (None: no counterpart)
    shuffle: str  # the file's v1 shuffle order: "paper" or "megvii" ("" for v2)
    preprocessing: Preprocessing
    classifier: str
    infer: Callable[[Mapping[str, Tensor]], str | None]  # our model name from the file's shapes (may raise)


def has(state: Mapping[str, Tensor], prefix: str, part: str) -> bool:
    """Whether some key of ``state`` starts with ``prefix`` and contains ``part`` (a layout marker)."""
    # Lenient on purpose: a partial file is still recognised, so the error names its first missing key.
    return any(key.startswith(prefix) and part in key for key in state)


def v1_name(groups: int, channels: tuple[int, ...]) -> str | None:
    """Our registered v1 model with ``groups`` and (stem, stage2, stage3, stage4) ``channels``, or None."""
    for width in tables.V1_WIDTHS:
        if groups in tables.V1_GROUPS and stage_channels(groups, width) == channels:
            name = f"shufflenet_v1_g{groups}_{width_suffix(width)}"
            return name if name in list_models() else None
    return None


def infer_from(layout: Layout, state: Mapping[str, Tensor]) -> str | None:
    """``layout.infer`` of ``state``, or None when the file's shapes fit no registered model."""
    try:
        return layout.infer(state)
    except (KeyError, IndexError, ZeroDivisionError):
        return None


def describe(model: nn.Module) -> str:
    """The model's class and options, for error messages."""
    if isinstance(model, ShuffleNetV1):
        return f"ShuffleNetV1(groups={model.groups}, width_mult={model.width_mult})"
    if isinstance(model, ShuffleNetV2):
        return f"ShuffleNetV2(width_mult={model.width_mult})"
    if isinstance(model, ShuffleNetV2Plus):
        return f"ShuffleNetV2Plus(size={model.size!r})"
    return type(model).__name__


def family_of(model: nn.Module) -> str | None:
    """The registry family of a model instance (``shufflenet_v1``, ...), None for other modules."""
    families = {ShuffleNetV1: "shufflenet_v1", ShuffleNetV2: "shufflenet_v2", ShuffleNetV2Plus: "shufflenet_v2_plus"}
    return next((family for cls, family in families.items() if isinstance(model, cls)), None)


def _gather(state: Mapping[str, Tensor], model: nn.Module, layout: Layout, hint: str) -> dict[str, Tensor]:
    """Our keys filled from ``state``; errors name the first foreign key missing or mis-shaped."""
    described = describe(model)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, tensor in model.state_dict().items():
        theirs = layout.key(key)
        if theirs is None:  # megvii's classifier has no bias
            weight = state.get(layout.classifier)
            if weight is not None:
                out[key] = torch.zeros(weight.shape[0], dtype=weight.dtype)
            continue
        if theirs not in state:
            if key.startswith("fc."):
                continue  # backbone-only file: load_pretrained re-initialises the classifier
            if key.endswith("num_batches_tracked"):
                out[key] = torch.zeros((), dtype=torch.long)  # files from before PyTorch 0.4.1 lack it
                continue
            raise CheckpointError(
                f"{layout.name} checkpoint has no key {theirs!r} (for our {key!r} of {described}); the file is "
                f"incomplete or for another architecture{hint}"
            )
        used.add(theirs)
        value = state[theirs]
        if value.shape != tensor.shape and not key.startswith("fc."):
            raise CheckpointError(
                f"{layout.name} key {theirs!r} has shape {tuple(value.shape)}, {described} expects "
                f"{tuple(tensor.shape)} (our {key!r}); the file is for another width or group count{hint}"
            )
        out[key] = value
    # Unused tensors pass through under their own names; load_pretrained reports them as ignored.
    out.update({k: v for k, v in state.items() if k not in used and k not in out})
    return out


def convert(layout: Layout, raw: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Tensor], Preprocessing]:
    """The file ``raw`` (in ``layout``) as a state_dict for ``model`` and the preprocessing it was trained with."""
    state = unwrap_state_dict(raw)
    name = infer_from(layout, state)
    hint = f" (its shapes are those of {name}: create_model({name!r}, weights=...))" if name else ""
    if family_of(model) != layout.family:
        raise CheckpointError(
            f"the file is a {layout.name} checkpoint but the model is {describe(model)}, another "
            f"architecture{hint or '; build a ' + layout.family + '_* model'}"
        )
    logger.info("detected a %s checkpoint; converting it for %s", layout.name, describe(model))
    out = _gather(state, model, layout, hint)
    if isinstance(model, ShuffleNetV1):
        relabel_v1(out, model, layout.name, layout.shuffle)
    return out, layout.preprocessing


def adapter(layout: Layout) -> FormatAdapter:
    """The :class:`FormatAdapter` that detects and converts ``layout``."""
    return FormatAdapter(
        name=layout.name,
        detect=lambda raw: layout.marker(unwrap_state_dict(raw)),
        convert=lambda raw, model: convert(layout, raw, model),
    )
