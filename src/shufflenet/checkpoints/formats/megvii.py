"""megvii-model/ShuffleNet-Series checkpoints: ShuffleNet v1 converts exactly; its ShuffleNetV2 is refused clearly.

Its ShuffleNetV2+ files convert in :mod:`~shufflenet.checkpoints.formats.megvii_plus`.

megvii's v1 shuffles after the depthwise conv, with the inverse of the paper's permutation; see
:mod:`~shufflenet.checkpoints.formats.v1_shuffle` for why outputs still match exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from shufflenet import tables
from shufflenet.checkpoints.adapters import FormatAdapter
from shufflenet.checkpoints.files import CheckpointError, unwrap_state_dict
from shufflenet.checkpoints.formats.layout import Layout, has, v1_name
from shufflenet.transforms import Preprocessing

# megvii's ToBGRTensor: BGR, 0-255, no mean/std; OpenCV resize to 256, centre crop 224.
MEGVII_PREPROCESSING = Preprocessing(
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pixel_scale=255.0, channel_order="BGR", extra={"source": "megvii"}
)
_STAGE_OFFSETS = {2: 0, 3: tables.V1_STAGE_REPEATS[0], 4: sum(tables.V1_STAGE_REPEATS[:2])}
_V1_PARTS = {
    ("compress", "0"): ("branch_main_1", 0),
    ("compress", "1"): ("branch_main_1", 1),
    ("depthwise", "0"): ("branch_main_1", 3),
    ("depthwise", "1"): ("branch_main_1", 4),
    ("expand", "0"): ("branch_main_2", 0),
    ("expand", "1"): ("branch_main_2", 1),
}


def _v1_key(key: str) -> str | None:
    """Our v1 key -> megvii's (None: no counterpart, the classifier bias)."""
    if key == "fc.weight":
        return "classifier.0.weight"
    if key == "fc.bias":
        return None
    if key.startswith("conv1."):
        return "first_conv." + key[len("conv1.") :]
    stage, unit, part, index, rest = re.fullmatch(r"stage(\d)\.(\d+)\.(\w+)\.(\d)\.(.+)", key).groups()
    branch, position = _V1_PARTS[(part, index)]
    return f"features.{_STAGE_OFFSETS[int(stage)] + int(unit)}.{branch}.{position}.{rest}"


def _v1_model_name(state: Mapping[str, Tensor]) -> str | None:
    stem = state["first_conv.0.weight"].shape[0]
    last = [_STAGE_OFFSETS[s] + r - 1 for s, r in zip((2, 3, 4), tables.V1_STAGE_REPEATS, strict=True)]
    stages = tuple(state[f"features.{n}.branch_main_2.0.weight"].shape[0] for n in last)
    groups = stages[0] // state["features.1.branch_main_1.0.weight"].shape[1]
    return v1_name(groups, (stem, *stages))


MEGVII_V1 = Layout(
    name="megvii ShuffleNet v1",
    source="megvii",
    family="shufflenet_v1",
    marker=lambda s: has(s, "features.", ".branch_main_1."),
    key=_v1_key,
    shuffle="megvii",
    preprocessing=MEGVII_PREPROCESSING,
    classifier="classifier.0.weight",
    infer=_v1_model_name,
)
MEGVII_V2_NAME = "megvii ShuffleNet v2"


def is_megvii_v2(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` is megvii's ShuffleNetV2-family layout (``features.N.branch_main``)."""
    return has(state, "features.", ".branch_main.")


def megvii_v2_error() -> CheckpointError:
    """Why megvii's v2 files are refused, and what to use instead."""
    return CheckpointError(
        "the file is a megvii ShuffleNetV2-family checkpoint (features.N.branch_main). Its stride-2 units "
        "split channels differently from torchvision's layout (projection branch keeps the input width), "
        "so its weights have other shapes and are not supported; use torchvision's ShuffleNet V2 weights, "
        "which load unchanged, or mmpretrain's (`shufflenet convert --from mmpretrain`); megvii's ShuffleNetV2+ "
        "files (with LastSE) convert into shufflenet_v2_plus_* models"
    )


def _reject_v2(raw: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Tensor], Preprocessing]:
    raise megvii_v2_error()


MEGVII_V2_REJECTION = FormatAdapter(MEGVII_V2_NAME, lambda raw: is_megvii_v2(unwrap_state_dict(raw)), _reject_v2)
