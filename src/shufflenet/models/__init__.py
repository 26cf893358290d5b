"""ShuffleNet v1 and v2 models and their registry."""

from __future__ import annotations

from functools import partial
from typing import Any

from shufflenet import tables
from shufflenet.models.features import FeatureInfo, ShuffleNetFeatures, feature_info
from shufflenet.models.ops import ChannelShuffle, channel_shuffle
from shufflenet.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_builder,
    model_info,
    register_model,
)
from shufflenet.models.v1 import ShuffleNetV1, stage_channels
from shufflenet.models.v2 import ShuffleNetV2
from shufflenet.models.v2_plus import ShuffleNetV2Plus


def width_suffix(width_mult: float) -> str:
    """The torchvision-style width suffix: 0.5 -> ``x0_5``, 1.0 -> ``x1_0``, 0.25 -> ``x0_25``."""
    return "x" + f"{width_mult:g}".replace(".", "_") + ("_0" if float(width_mult).is_integer() else "")


def _build_v1(groups: int, width_mult: float, **kwargs: Any) -> ShuffleNetV1:
    return ShuffleNetV1(groups=groups, width_mult=width_mult, **kwargs)


def _build_v2(width_mult: float, **kwargs: Any) -> ShuffleNetV2:
    return ShuffleNetV2(width_mult=width_mult, **kwargs)


def _build_v2_plus(size: str, **kwargs: Any) -> ShuffleNetV2Plus:
    return ShuffleNetV2Plus(size=size, **kwargs)


def _register_all() -> None:
    for width in tables.V2_WIDTHS:
        name = f"shufflenet_v2_{width_suffix(width)}"
        info = ModelInfo(
            name=name,
            family="shufflenet_v2",
            width_mult=width,
            paper_mflops=tables.V2_TABLE5_MFLOPS[width],
            paper_mflops_source="v2 Table 5",
            paper_params=tables.V2_TORCHVISION_PARAMS[width],
        )
        register_model(info, partial(_build_v2, width))
    for groups in tables.V1_GROUPS:
        for width in tables.V1_WIDTHS:
            name = f"shufflenet_v1_g{groups}_{width_suffix(width)}"
            if width == 1.0:
                mflops, source = tables.V1_TABLE1_MFLOPS[groups], "v1 Table 1"
            elif (groups, width) in tables.V1_MEGVII_MFLOPS:
                mflops, source = tables.V1_MEGVII_MFLOPS[(groups, width)], "megvii"
            elif width in tables.V1_TABLE2_MFLOPS:
                mflops, source = tables.V1_TABLE2_MFLOPS[width], "v1 Table 2"
            else:
                mflops, source = None, ""
            info = ModelInfo(
                name=name,
                family="shufflenet_v1",
                width_mult=width,
                groups=groups,
                paper_mflops=mflops,
                paper_mflops_source=source,
            )
            register_model(info, partial(_build_v1, groups, width))
    for size in tables.V2_PLUS_SIZES:
        info = ModelInfo(
            name=f"shufflenet_v2_plus_{size}",
            family="shufflenet_v2_plus",
            width_mult=1.0,  # the sizes are stage-width tables, not multiples of one
            paper_mflops=tables.V2_PLUS_README[size]["mflops"],
            paper_mflops_source="megvii README",
            paper_params=tables.V2_PLUS_OFFICIAL_PARAMS[size],
            extra={"size": size},
        )
        register_model(info, partial(_build_v2_plus, size))


_register_all()

__all__ = [
    "ChannelShuffle",
    "FeatureInfo",
    "ModelInfo",
    "ShuffleNetFeatures",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleNetV2Plus",
    "channel_shuffle",
    "create_model",
    "feature_info",
    "list_models",
    "model_builder",
    "model_info",
    "register_model",
    "stage_channels",
    "width_suffix",
]
