"""Other projects' ShuffleNet checkpoints on our models, with identical outputs: megvii v1, mmpretrain v1/v2.

Importing this module registers one :class:`~shufflenet.weights.FormatAdapter` per foreign layout, so
``create_model(name, weights=FILE)`` / :func:`~shufflenet.weights.load_pretrained` detect and convert
them; :func:`convert_checkpoint` turns one into our self-describing checkpoint (``shufflenet convert``).

v1 unit algebra. megvii-model/ShuffleNet-Series and mmpretrain shuffle after the depthwise conv, we
(Fig. 2) before it. The depthwise conv and its BN act per channel, so moving the shuffle in front of
them only relabels their channels. mmpretrain's shuffle is the paper's, so that relabelling is all.
megvii's is the inverse permutation (reshape to (C/g, g)): a first-conv channel of group a then reaches
second-conv group k by another route. Outputs can still match exactly when, for every (a, k), both
permutations route as many channels from a to k: pairing the channels of each (a, k) cell permutes the
first 1x1 conv's outputs (and BN) within their group, the depthwise conv/BN with them, and the second
1x1 conv's inputs within each group. That holds for every g=3 size and g=8 2x; g=8 0.5x/1x/1.5x fail it
(e.g. 6 channels per group), so those load into a model built with ``shuffle_order="megvii"``.
Both projects' stride-2 units concatenate [avg-pool(x), relu(main)]; we apply the ReLU after the
concatenation, which is the same because every unit input is already non-negative (a ReLU output).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.models import ShuffleNetV1, ShuffleNetV2, create_model, list_models, width_suffix
from shufflenet.models.v1 import stage_channels
from shufflenet.transforms import Preprocessing
from shufflenet.weights import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    FormatAdapter,
    make_checkpoint,
    read_file,
    register_adapter,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

SOURCES = ("megvii", "mmpretrain")
# megvii's ToBGRTensor: BGR, 0-255, no mean/std; OpenCV resize to 256, centre crop 224.
MEGVII_PREPROCESSING = Preprocessing(
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pixel_scale=255.0, channel_order="BGR", extra={"source": "megvii"}
)
# mmpretrain's ClsDataPreprocessor for ImageNet configs: RGB, mean/std on 0-255; resize edge 256, crop 224.
MMPRETRAIN_PREPROCESSING = Preprocessing(
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    pixel_scale=255.0,
    channel_order="RGB",
    extra={"source": "mmpretrain"},
)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STAGE_OFFSETS = {2: 0, 3: tables.V1_STAGE_REPEATS[0], 4: sum(tables.V1_STAGE_REPEATS[:2])}


class ShuffleOrderError(CheckpointError):
    """The file's v1 shuffle cannot be relabelled onto the model's ``shuffle_order``; the other order works."""

    def __init__(self, message: str, needed: str) -> None:
        super().__init__(message)
        self.needed = needed


# ------------------------------------------------------------------------------------- key maps
def _megvii_v1_key(key: str) -> str | None:
    """Our v1 key -> megvii's (None: no counterpart, the classifier bias)."""
    if key == "fc.weight":
        return "classifier.0.weight"
    if key == "fc.bias":
        return None
    if key.startswith("conv1."):
        return "first_conv." + key[len("conv1.") :]
    stage, unit, part, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(\w+)\.(\d)\.(.+)", key).groups()
    branch, position = {
        ("compress", "0"): ("branch_main_1", 0),
        ("compress", "1"): ("branch_main_1", 1),
        ("depthwise", "0"): ("branch_main_1", 3),
        ("depthwise", "1"): ("branch_main_1", 4),
        ("expand", "0"): ("branch_main_2", 0),
        ("expand", "1"): ("branch_main_2", 1),
    }[(part, index)]
    return f"features.{_STAGE_OFFSETS[int(stage)] + int(unit)}.{branch}.{position}.{rest}"


_CONV_BN = {"0": "conv", "1": "bn"}


def _mmpretrain_v1_key(key: str) -> str:
    """Our v1 key -> mmpretrain's ShuffleNetV1 + LinearClsHead key."""
    if key.startswith("fc."):
        return "head." + key
    if key.startswith("conv1."):
        index, rest = key[len("conv1.") :].split(".", 1)
        return f"backbone.conv1.{_CONV_BN[index]}.{rest}"
    stage, unit, part, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(\w+)\.(\d)\.(.+)", key).groups()
    module = {"compress": "g_conv_1x1_compress", "depthwise": "depthwise_conv3x3_bn", "expand": "g_conv_1x1_expand"}
    return f"backbone.layers.{int(stage) - 2}.{unit}.{module[part]}.{_CONV_BN[index]}.{rest}"


# torchvision's Sequential indices -> mmpretrain's ConvModule (conv, bn) pairs.
_V2_BRANCH = {
    "branch1": {"0": "0.conv", "1": "0.bn", "2": "1.conv", "3": "1.bn"},
    "branch2": {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "5": "2.conv", "6": "2.bn"},
}


def _mmpretrain_v2_key(key: str) -> str:
    """Our (torchvision) v2 key -> mmpretrain's ShuffleNetV2 + LinearClsHead key."""
    if key.startswith("fc."):
        return "head." + key
    for ours, theirs in (("conv1.", "backbone.conv1."), ("conv5.", "backbone.layers.3.")):
        if key.startswith(ours):
            index, rest = key[len(ours) :].split(".", 1)
            return f"{theirs}{_CONV_BN[index]}.{rest}"
    stage, unit, branch, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(branch\d)\.(\d)\.(.+)", key).groups()
    return f"backbone.layers.{int(stage) - 2}.{unit}.{branch}.{_V2_BRANCH[branch][index]}.{rest}"


# ------------------------------------------------------------------------------------- what a file holds
@dataclass(frozen=True)
class _Layout:
    """One foreign layout: how to recognise it, map keys, and what the file's shapes say it is."""

    name: str
    source: str
    family: str  # "shufflenet_v1" / "shufflenet_v2"
    marker: Callable[[Mapping[str, Tensor]], bool]
    key: Callable[[str], str | None]
    shuffle: str  # the file's v1 shuffle order: "paper" or "megvii" ("" for v2)
    preprocessing: Preprocessing
    classifier: str


def _has(state: Mapping[str, Tensor], prefix: str, part: str) -> bool:
    # Lenient on purpose: a partial file is still recognised, so the error names its first missing key.
    return any(key.startswith(prefix) and part in key for key in state)


MEGVII_V1 = _Layout(
    name="megvii ShuffleNet v1",
    source="megvii",
    family="shufflenet_v1",
    marker=lambda s: _has(s, "features.", ".branch_main_1."),
    key=_megvii_v1_key,
    shuffle="megvii",
    preprocessing=MEGVII_PREPROCESSING,
    classifier="classifier.0.weight",
)
MMPRETRAIN_V1 = _Layout(
    name="mmpretrain ShuffleNet v1",
    source="mmpretrain",
    family="shufflenet_v1",
    marker=lambda s: _has(s, "backbone.layers.", ".g_conv_1x1_compress."),
    key=_mmpretrain_v1_key,
    shuffle="paper",
    preprocessing=MMPRETRAIN_PREPROCESSING,
    classifier="head.fc.weight",
)
MMPRETRAIN_V2 = _Layout(
    name="mmpretrain ShuffleNet v2",
    source="mmpretrain",
    family="shufflenet_v2",
    marker=lambda s: _has(s, "backbone.layers.", ".branch2."),
    key=_mmpretrain_v2_key,
    shuffle="",
    preprocessing=MMPRETRAIN_PREPROCESSING,
    classifier="head.fc.weight",
)
LAYOUTS = (MEGVII_V1, MMPRETRAIN_V1, MMPRETRAIN_V2)


def _is_megvii_v2(state: Mapping[str, Tensor]) -> bool:
    return _has(state, "features.", ".branch_main.")


def detect_layout(raw: Mapping[str, Any]) -> str | None:
    """The name of the foreign layout ``raw`` (a file's contents) is in, or None for none we know."""
    state = unwrap_state_dict(raw)
    for layout in LAYOUTS:
        if layout.marker(state):
            return layout.name
    return "megvii ShuffleNet v2" if _is_megvii_v2(state) else None


def infer_model_name(raw: Mapping[str, Any]) -> str | None:
    """Our registered model whose shapes the foreign checkpoint ``raw`` has, or None if none fits."""
    state = unwrap_state_dict(raw)
    try:
        if MEGVII_V1.marker(state):
            stem = state["first_conv.0.weight"].shape[0]
            last = [_STAGE_OFFSETS[s] + r - 1 for s, r in zip((2, 3, 4), tables.V1_STAGE_REPEATS, strict=True)]
            stages = tuple(state[f"features.{n}.branch_main_2.0.weight"].shape[0] for n in last)
            groups = stages[0] // state["features.1.branch_main_1.0.weight"].shape[1]
            return _v1_name(groups, (stem, *stages))
        if MMPRETRAIN_V1.marker(state):
            stem = state["backbone.conv1.conv.weight"].shape[0]
            stages = tuple(state[f"backbone.layers.{i}.1.g_conv_1x1_expand.conv.weight"].shape[0] for i in range(3))
            groups = stages[0] // state["backbone.layers.0.1.g_conv_1x1_compress.conv.weight"].shape[1]
            return _v1_name(groups, (stem, *stages))
        if MMPRETRAIN_V2.marker(state):
            stages = tuple(2 * state[f"backbone.layers.{i}.1.branch2.0.conv.weight"].shape[0] for i in range(3))
            channels = (state["backbone.conv1.conv.weight"].shape[0], *stages)
            channels += (state["backbone.layers.3.conv.weight"].shape[0],)
            for width, table in tables.V2_TABLE5_CHANNELS.items():
                if tuple(table) == channels:
                    return f"shufflenet_v2_{width_suffix(width)}"
    except (KeyError, IndexError, ZeroDivisionError):
        return None
    return None


def _v1_name(groups: int, channels: tuple[int, ...]) -> str | None:
    for width in tables.V1_WIDTHS:
        if groups in tables.V1_GROUPS and stage_channels(groups, width) == channels:
            name = f"shufflenet_v1_g{groups}_{width_suffix(width)}"
            return name if name in list_models() else None
    return None


# ------------------------------------------------------------------------------------- v1 unit algebra
def shuffle_sources(channels: int, groups: int, order: str) -> Tensor:
    """``src[j]``: the channel that lands at position ``j`` after a shuffle in ``order`` (paper or megvii)."""
    index = torch.arange(channels)
    if order == "paper":  # reshape (g, C/g), transpose, flatten (Sec. 3.1)
        return index.view(groups, channels // groups).t().flatten()
    if order == "megvii":  # reshape (C/g, g), transpose, flatten: the inverse
        return index.view(channels // groups, groups).t().flatten()
    raise ValueError(f"unknown shuffle order {order!r}; valid: 'paper', 'megvii'")


@dataclass(frozen=True)
class UnitPermutation:
    """How one foreign v1 unit's tensors are relabelled for ours (indices into the foreign tensors)."""

    compress: Tensor  # our first-conv output m' <- their m (within the same group)
    depthwise: Tensor  # our depthwise channel j' <- their m
    expand: list[Tensor]  # per group k: our in-group input i' <- their in-group input


def unit_permutation(
    channels: int, groups: int, compress_groups: int, ours: Tensor, theirs: Tensor
) -> UnitPermutation | None:
    """Relabelling that makes our unit (shuffle ``ours`` before the depthwise) equal theirs (``theirs`` after).

    ``ours``/``theirs`` are shuffle sources (see :func:`shuffle_sources`); None when no relabelling exists.
    """
    per_group = channels // groups
    compress_size = channels // compress_groups
    our_position, their_position = torch.argsort(ours), torch.argsort(theirs)
    cells: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for m in range(channels):
        a = m // compress_size
        cells.setdefault((a, int(our_position[m]) // per_group), ([], []))[0].append(m)
        cells.setdefault((a, int(their_position[m]) // per_group), ([], []))[1].append(m)
    compress = torch.empty(channels, dtype=torch.long)
    for our_channels, their_channels in cells.values():
        if len(our_channels) != len(their_channels):
            return None
        compress[our_channels] = torch.tensor(their_channels, dtype=torch.long)
    depthwise = compress[ours]
    source_position = their_position[depthwise]  # their position feeding our position j', same group
    expand = [source_position[k * per_group : (k + 1) * per_group] - k * per_group for k in range(groups)]
    return UnitPermutation(compress=compress, depthwise=depthwise, expand=expand)


def _permute_unit(state: dict[str, Tensor], prefix: str, perm: UnitPermutation, groups: int) -> None:
    for part, index in (("compress", perm.compress), ("depthwise", perm.depthwise)):
        state[f"{prefix}.{part}.0.weight"] = state[f"{prefix}.{part}.0.weight"][index]
        for name in _BN_KEYS[:4]:
            state[f"{prefix}.{part}.1.{name}"] = state[f"{prefix}.{part}.1.{name}"][index]
    weight = state[f"{prefix}.expand.0.weight"]
    rows = weight.shape[0] // groups
    state[f"{prefix}.expand.0.weight"] = torch.cat(
        [weight[k * rows : (k + 1) * rows][:, index] for k, index in enumerate(perm.expand)]
    )


# ------------------------------------------------------------------------------------- conversion
def _gather(state: Mapping[str, Tensor], model: nn.Module, layout: _Layout, hint: str) -> dict[str, Tensor]:
    """Our keys filled from ``state``; errors name the first foreign key missing or mis-shaped."""
    described = _describe(model)
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


def _describe(model: nn.Module) -> str:
    if isinstance(model, ShuffleNetV1):
        return f"ShuffleNetV1(groups={model.groups}, width_mult={model.width_mult})"
    if isinstance(model, ShuffleNetV2):
        return f"ShuffleNetV2(width_mult={model.width_mult})"
    return type(model).__name__


def _hint(raw: Mapping[str, Any]) -> str:
    name = infer_model_name(raw)
    return f" (its shapes are those of {name}: create_model({name!r}, weights=...))" if name else ""


def _convert(layout: _Layout, raw: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Tensor], Preprocessing]:
    state = unwrap_state_dict(raw)
    hint = _hint(raw)
    family = "shufflenet_v1" if isinstance(model, ShuffleNetV1) else "shufflenet_v2"
    if not isinstance(model, ShuffleNetV1 | ShuffleNetV2) or family != layout.family:
        raise CheckpointError(
            f"the file is a {layout.name} checkpoint but the model is {_describe(model)}, another "
            f"architecture{hint or '; build a ' + layout.family + '_* model'}"
        )
    logger.info("detected a %s checkpoint; converting it for %s", layout.name, _describe(model))
    out = _gather(state, model, layout, hint)
    if isinstance(model, ShuffleNetV1):
        _relabel_v1(out, model, layout)
    return out, layout.preprocessing


def _relabel_v1(state: dict[str, Tensor], model: ShuffleNetV1, layout: _Layout) -> None:
    for stage in (2, 3, 4):
        for index, unit in enumerate(getattr(model, f"stage{stage}")):
            if unit.groups == 1:
                theirs = ours = torch.arange(unit.depthwise[0].out_channels)
            else:
                channels = unit.depthwise[0].out_channels
                ours = unit.shuffle(torch.arange(channels, dtype=torch.float64).view(1, -1, 1, 1)).flatten().long()
                theirs = shuffle_sources(channels, unit.groups, layout.shuffle)
            perm = unit_permutation(len(ours), unit.groups, unit.compress[0].groups, ours, theirs)
            if perm is None:
                other = "megvii" if unit.shuffle_order == "paper" else "paper"
                raise ShuffleOrderError(
                    f"{layout.name} unit stage{stage}.{index} ({len(ours) // unit.groups} channels per group) "
                    f"cannot be relabelled onto shuffle_order={unit.shuffle_order!r}; build the model with "
                    f"shuffle_order={other!r} (create_model(name, shuffle_order={other!r}, weights=...)), or "
                    f"convert the file once with `shufflenet convert`, which records that option",
                    needed=other,
                )
            _permute_unit(state, f"stage{stage}.{index}", perm, unit.groups)


def _reject_megvii_v2(raw: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Tensor], Preprocessing]:
    raise _megvii_v2_error()


def _megvii_v2_error() -> CheckpointError:
    return CheckpointError(
        "the file is a megvii ShuffleNetV2-family checkpoint (features.N.branch_main). Its stride-2 units "
        "split channels differently from torchvision's layout (projection branch keeps the input width), "
        "so its weights have other shapes and are not supported; use torchvision's ShuffleNet V2 weights, "
        "which load unchanged, or mmpretrain's (`shufflenet convert --from mmpretrain`)"
    )


def _adapter(layout: _Layout) -> FormatAdapter:
    return FormatAdapter(
        name=layout.name,
        detect=lambda raw: layout.marker(unwrap_state_dict(raw)),
        convert=lambda raw, model: _convert(layout, raw, model),
    )


for _layout in LAYOUTS:
    register_adapter(_adapter(_layout))
register_adapter(
    FormatAdapter("megvii ShuffleNet v2", lambda raw: _is_megvii_v2(unwrap_state_dict(raw)), _reject_megvii_v2)
)


# ------------------------------------------------------------------------------------- whole files
def _class_names(raw: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """Class names stored by mmcls 0.x (meta.CLASSES) or mmpretrain 1.x (meta.dataset_meta.classes)."""
    meta = raw.get("meta")
    if isinstance(meta, Mapping):
        names = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
        if isinstance(names, list | tuple) and len(names) == num_classes:
            return [str(n) for n in names]
    if num_classes == 1000:
        # Both projects train on ImageNet folders in the standard (sorted WordNet id) order torchvision labels.
        try:
            from torchvision.models._meta import _IMAGENET_CATEGORIES
        except ImportError:  # a private torchvision table; numbered classes without it
            return None
        return list(_IMAGENET_CATEGORIES)
    return None


def convert_checkpoint(
    path: str | Path, arch: str | None = None, source: str | None = None, class_names: list[str] | None = None
) -> dict[str, Any]:
    """A megvii/mmpretrain file as our self-describing checkpoint (save with ``weights.save_checkpoint``).

    ``arch`` defaults to the registered model the file's shapes match; ``source`` ('megvii'/'mmpretrain')
    is checked against the detected layout. The foreign preprocessing is recorded, and for megvii g=8
    files that need it, ``shuffle_order='megvii'`` in ``model_kwargs``.
    """
    path = Path(path)
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    raw = read_file(path)
    if raw.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is already a shufflenet checkpoint; load it with shufflenet.load_model")
    name = detect_layout(raw)
    state = unwrap_state_dict(raw)
    if name is None:
        wanted = f"{source} " if source else "megvii or mmpretrain "
        raise CheckpointError(
            f"{path} is not a {wanted}ShuffleNet checkpoint (its first keys: {list(state)[:3]}); plain and "
            f"torchvision state_dicts load directly with create_model(name, weights=...)"
        )
    layout = next((layout for layout in LAYOUTS if layout.name == name), None)
    if layout is None:
        raise CheckpointError(f"{path}: {_megvii_v2_error()}")
    if source is not None and layout.source != source:
        raise CheckpointError(f"{path} is a {layout.name} checkpoint, not {source}; use --from {layout.source}")
    inferred = infer_model_name(raw)
    arch = arch or inferred
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
            converted, preprocessing = _convert(layout, raw, model)
        except ShuffleOrderError as err:
            model_kwargs = {"shuffle_order": err.needed}
            model = create_model(arch, num_classes=num_classes, **model_kwargs)
            converted, preprocessing = _convert(layout, raw, model)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    model.load_state_dict({key: converted[key] for key in model.state_dict()})
    return make_checkpoint(
        model,
        arch,
        class_names or _class_names(raw, num_classes),
        preprocessing,
        model_kwargs,
        converted_from={"format": layout.name, "file": path.name, "sha256": _sha256(path)},
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
