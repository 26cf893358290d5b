"""Foreign checkpoint files as our self-describing checkpoints (``shufflenet convert``), and what a file is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shufflenet.checkpoints.files import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    file_sha256,
    make_checkpoint,
    read_file,
    unwrap_state_dict,
)
from shufflenet.checkpoints.formats import LAYOUTS, Layout, torchvision
from shufflenet.checkpoints.formats.layout import convert, infer_from
from shufflenet.checkpoints.formats.megvii import MEGVII_V2_NAME, is_megvii_v2, megvii_v2_error
from shufflenet.checkpoints.formats.v1_shuffle import ShuffleOrderError
from shufflenet.models import create_model

SOURCES = ("megvii", "mmpretrain")


def _layout_of(raw: Mapping[str, Any]) -> Layout | None:
    state = unwrap_state_dict(raw)
    return next((layout for layout in LAYOUTS if layout.marker(state)), None)


def detect_layout(raw: Mapping[str, Any]) -> str | None:
    """The name of the foreign layout ``raw`` (a file's contents) is in, or None for none we know."""
    layout = _layout_of(raw)
    if layout is not None:
        return layout.name
    return MEGVII_V2_NAME if is_megvii_v2(unwrap_state_dict(raw)) else None


def infer_model_name(raw: Mapping[str, Any]) -> str | None:
    """Our registered model whose shapes the foreign checkpoint ``raw`` has, or None if none fits."""
    layout = _layout_of(raw)
    return infer_from(layout, unwrap_state_dict(raw)) if layout is not None else None


def _class_names(raw: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """Class names stored by mmcls 0.x (meta.CLASSES) or mmpretrain 1.x (meta.dataset_meta.classes)."""
    meta = raw.get("meta")
    if isinstance(meta, Mapping):
        names = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
        if isinstance(names, list | tuple) and len(names) == num_classes:
            return [str(n) for n in names]
    if num_classes == 1000:
        # Both projects train on ImageNet folders in the standard (sorted WordNet id) order torchvision labels.
        return torchvision.imagenet_class_names()
    return None


def _foreign_layout(path: Path, raw: Mapping[str, Any], source: str | None) -> Layout:
    """The layout of the file ``raw`` read from ``path``; errors say what the file is instead."""
    if raw.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is already a shufflenet checkpoint; load it with shufflenet.load_model")
    name = detect_layout(raw)
    if name is None:
        wanted = f"{source} " if source else "megvii or mmpretrain "
        raise CheckpointError(
            f"{path} is not a {wanted}ShuffleNet checkpoint (its first keys: {list(unwrap_state_dict(raw))[:3]}); "
            f"plain and torchvision state_dicts load directly with create_model(name, weights=...)"
        )
    layout = next((layout for layout in LAYOUTS if layout.name == name), None)
    if layout is None:
        raise CheckpointError(f"{path}: {megvii_v2_error()}")
    if source is not None and layout.source != source:
        raise CheckpointError(f"{path} is a {layout.name} checkpoint, not {source}; use --from {layout.source}")
    return layout


def convert_checkpoint(
    path: str | Path, arch: str | None = None, source: str | None = None, class_names: list[str] | None = None
) -> dict[str, Any]:
    """A megvii/mmpretrain file as our self-describing checkpoint (save with ``save_checkpoint``).

    ``arch`` defaults to the registered model the file's shapes match; ``source`` ('megvii'/'mmpretrain')
    is checked against the detected layout. The foreign preprocessing is recorded, and for megvii g=8
    files that need it, ``shuffle_order='megvii'`` in ``model_kwargs``.
    """
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    raw = read_file(path)
    layout = _foreign_layout(path, raw, source)
    state = unwrap_state_dict(raw)
    arch = arch or infer_model_name(raw)
    if arch is None:
        raise CheckpointError(f"{path}: its shapes match no registered model; pass the model name explicitly")
    if layout.classifier not in state:
        raise CheckpointError(
            f"{path} has no classifier ({layout.classifier!r}), so it is a backbone-only checkpoint; for "
            f"fine-tuning load it directly with create_model({arch!r}, num_classes=N, weights=...)"
        )
    num_classes = state[layout.classifier].shape[0]
    model_kwargs: dict[str, Any] = {}
    model = create_model(arch, num_classes=num_classes)
    try:
        try:
            converted, preprocessing = convert(layout, raw, model)
        except ShuffleOrderError as err:
            model_kwargs = {"shuffle_order": err.needed}
            model = create_model(arch, num_classes=num_classes, **model_kwargs)
            converted, preprocessing = convert(layout, raw, model)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    model.load_state_dict({key: converted[key] for key in model.state_dict()})
    return make_checkpoint(
        model,
        arch,
        class_names or _class_names(raw, num_classes),
        preprocessing,
        model_kwargs,
        converted_from={"format": layout.name, "file": path.name, "sha256": file_sha256(path)},
    )
