"""megvii-model/ShuffleNet-Series ShuffleNetV2+ checkpoints: Small/Medium/Large convert exactly (same logits).

Their train.py saves ``{'state_dict': model.state_dict()}`` from ``nn.DataParallel`` (``module.`` prefixes, which
:func:`~shufflenet.checkpoints.files.unwrap_state_dict` removes). Our ShuffleNetV2+ keeps their channel layout
and their Sequential indices inside each unit, so converting only renames keys:

==========================================  ==========================================
theirs                                      ours
==========================================  ==========================================
``first_conv.i``                            ``conv1.i``
``features.N.branch_main|branch_proj.i``    ``stageS.U.branch_main|branch_proj.i`` (N counts the 20 units)
``...branch_main.i.SE_opr.1|2|4``           ``...branch_main.i.squeeze.0|squeeze.1|expand``
``conv_last.i``                             ``conv5.i``
``LastSE.SE_opr.1|2|4``                     ``head_se.squeeze.0|squeeze.1|expand``
``fc.0`` (1280 -> 1280, h-swish after)      ``head_linear.0``
``classifier.0`` (no bias)                  ``fc`` (no bias)
==========================================  ==========================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from itertools import accumulate

from torch import Tensor

from shufflenet import tables
from shufflenet.checkpoints.formats.layout import Layout, has
from shufflenet.checkpoints.formats.megvii import MEGVII_PREPROCESSING

# Their OpencvResize + ToBGRTensor (the same as their v1's): short side 256 with cv2.INTER_LINEAR, centre crop 224,
# BGR, 0-255, no mean/std. Our transforms resize with torchvision's antialiased bilinear, which differs from
# OpenCV's (no antialiasing) by a little on downscaled photos; the note keeps that fact with the checkpoint.
MEGVII_PLUS_PREPROCESSING = replace(
    MEGVII_PREPROCESSING, extra={"source": "megvii", "resize": "cv2.INTER_LINEAR (no antialias)"}
)
# features.N: the first unit index of each of our stages 1-4.
_STAGE_OFFSETS = dict(enumerate(accumulate(tables.V2_PLUS_STAGE_REPEATS, initial=0), start=1))
_SE_PARTS = {"squeeze.0": "SE_opr.1", "squeeze.1": "SE_opr.2", "expand": "SE_opr.4"}
_RENAMES = {"conv1.": "first_conv.", "conv5.": "conv_last.", "head_linear.": "fc.", "fc.": "classifier.0."}


def _se_key(rest: str) -> str:
    part, tail = rest.rsplit(".", 1)
    return f"{_SE_PARTS[part]}.{tail}"


def _key(key: str) -> str:
    """Our ShuffleNetV2+ key -> megvii's."""
    for ours, theirs in _RENAMES.items():
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    if key.startswith("head_se."):
        return "LastSE." + _se_key(key[len("head_se.") :])
    stage, unit, branch, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(branch_\w+?)\.(\d+)\.(.+)", key).groups()
    if rest.rsplit(".", 1)[0] in _SE_PARTS:
        rest = _se_key(rest)
    return f"features.{_STAGE_OFFSETS[int(stage)] + int(unit)}.{branch}.{index}.{rest}"


def _model_name(state: Mapping[str, Tensor]) -> str | None:
    """Our model whose stage widths the file has: the projection inputs of stages 2-4 and conv_last's input."""
    firsts = [_STAGE_OFFSETS[stage] for stage in (2, 3, 4)]
    widths = tuple(state[f"features.{n}.branch_proj.0.weight"].shape[0] for n in firsts)
    widths += (state["conv_last.0.weight"].shape[1],)
    for size, channels in tables.V2_PLUS_STAGE_CHANNELS.items():
        if channels == widths:
            return f"shufflenet_v2_plus_{size}"
    return None


MEGVII_V2_PLUS = Layout(
    name="megvii ShuffleNetV2+",
    source="megvii",
    family="shufflenet_v2_plus",
    marker=lambda s: has(s, "features.", ".branch_main.") and has(s, "LastSE.", ".SE_opr."),
    key=_key,
    shuffle="",
    preprocessing=MEGVII_PLUS_PREPROCESSING,
    classifier="classifier.0.weight",
    infer=_model_name,
)
