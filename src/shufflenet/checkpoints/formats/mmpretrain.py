"""open-mmlab mmpretrain (mmcls) checkpoints: ShuffleNet v1 and v2 backbones with a LinearClsHead.

mmpretrain's v1 shuffles after the depthwise conv with the paper's permutation, so converting it only
relabels channels (:mod:`~shufflenet.checkpoints.formats.v1_shuffle`); its v2 is torchvision's network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from shufflenet import tables
from shufflenet.checkpoints.formats.layout import Layout, has, v1_name
from shufflenet.models import width_suffix
from shufflenet.transforms import Preprocessing

# mmpretrain's ClsDataPreprocessor for ImageNet configs: RGB, mean/std on 0-255; resize edge 256, crop 224.
MMPRETRAIN_PREPROCESSING = Preprocessing(
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    pixel_scale=255.0,
    channel_order="RGB",
    extra={"source": "mmpretrain"},
)
_CONV_BN = {"0": "conv", "1": "bn"}
_V1_MODULES = {"compress": "g_conv_1x1_compress", "depthwise": "depthwise_conv3x3_bn", "expand": "g_conv_1x1_expand"}
# torchvision's Sequential indices -> mmpretrain's ConvModule (conv, bn) pairs.
_V2_BRANCH = {
    "branch1": {"0": "0.conv", "1": "0.bn", "2": "1.conv", "3": "1.bn"},
    "branch2": {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "5": "2.conv", "6": "2.bn"},
}


def _v1_key(key: str) -> str:
    """Our v1 key -> mmpretrain's ShuffleNetV1 + LinearClsHead key."""
    if key.startswith("fc."):
        return "head." + key
    if key.startswith("conv1."):
        index, rest = key[len("conv1.") :].split(".", 1)
        return f"backbone.conv1.{_CONV_BN[index]}.{rest}"
    stage, unit, part, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(\w+)\.(\d)\.(.+)", key).groups()
    return f"backbone.layers.{int(stage) - 2}.{unit}.{_V1_MODULES[part]}.{_CONV_BN[index]}.{rest}"


def _v2_key(key: str) -> str:
    """Our (torchvision) v2 key -> mmpretrain's ShuffleNetV2 + LinearClsHead key."""
    if key.startswith("fc."):
        return "head." + key
    for ours, theirs in (("conv1.", "backbone.conv1."), ("conv5.", "backbone.layers.3.")):
        if key.startswith(ours):
            index, rest = key[len(ours) :].split(".", 1)
            return f"{theirs}{_CONV_BN[index]}.{rest}"
    stage, unit, branch, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(branch\d)\.(\d)\.(.+)", key).groups()
    return f"backbone.layers.{int(stage) - 2}.{unit}.{branch}.{_V2_BRANCH[branch][index]}.{rest}"


def _v1_model_name(state: Mapping[str, Tensor]) -> str | None:
    stem = state["backbone.conv1.conv.weight"].shape[0]
    stages = tuple(state[f"backbone.layers.{i}.1.g_conv_1x1_expand.conv.weight"].shape[0] for i in range(3))
    groups = stages[0] // state["backbone.layers.0.1.g_conv_1x1_compress.conv.weight"].shape[1]
    return v1_name(groups, (stem, *stages))


def _v2_model_name(state: Mapping[str, Tensor]) -> str | None:
    stages = tuple(2 * state[f"backbone.layers.{i}.1.branch2.0.conv.weight"].shape[0] for i in range(3))
    channels = (state["backbone.conv1.conv.weight"].shape[0], *stages)
    channels += (state["backbone.layers.3.conv.weight"].shape[0],)
    for width, table in tables.V2_TABLE5_CHANNELS.items():
        if tuple(table) == channels:
            return f"shufflenet_v2_{width_suffix(width)}"
    return None


MMPRETRAIN_V1 = Layout(
    name="mmpretrain ShuffleNet v1",
    source="mmpretrain",
    family="shufflenet_v1",
    marker=lambda s: has(s, "backbone.layers.", ".g_conv_1x1_compress."),
    key=_v1_key,
    shuffle="paper",
    preprocessing=MMPRETRAIN_PREPROCESSING,
    classifier="head.fc.weight",
    infer=_v1_model_name,
)
MMPRETRAIN_V2 = Layout(
    name="mmpretrain ShuffleNet v2",
    source="mmpretrain",
    family="shufflenet_v2",
    marker=lambda s: has(s, "backbone.layers.", ".branch2."),
    key=_v2_key,
    shuffle="",
    preprocessing=MMPRETRAIN_PREPROCESSING,
    classifier="head.fc.weight",
    infer=_v2_model_name,
)
