"""ShuffleNet as a detection backbone: torchvision FPN builder, feature-level tables, ONNX export of the levels.

The feature model itself is ``create_model(name, features_only=True, out_indices=...)``
(:mod:`shufflenet.models.features`); this module connects it to torchvision's detection models and to ONNX.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from shufflenet.fileio import atomic_path, check_output_path
from shufflenet.models import create_model, list_models
from shufflenet.models.features import DEFAULT_OUT_INDICES, ShuffleNetFeatures, feature_info

ONNX_INPUT = "input"


def fpn_backbone(
    name: str,
    weights: str | Path | None = None,
    out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    norm_layer: Callable[..., nn.Module] | None = None,
    **kwargs: Any,
) -> BackboneWithFPN:
    """A torchvision ``BackboneWithFPN``: our feature model (``weights`` loaded) under a FeaturePyramidNetwork.

    The FPN outputs are named ``"0"``, ``"1"``, ... per selected level plus ``"pool"`` (torchvision's default
    ``LastLevelMaxPool``), so with the default four levels torchvision's ``FasterRCNN`` and ``RetinaNet``
    defaults (five anchor sizes, RoI pooling over ``"0"``-``"3"``) fit unchanged. ``out_channels`` is the
    FPN width the detection heads see (torchvision's ResNet FPNs use 256; NanoDet uses 96).
    """
    features = create_model(name, weights=weights, features_only=True, out_indices=tuple(out_indices), **kwargs)
    info = features.feature_info
    return_layers = {module: str(i) for i, module in enumerate(info.module_name())}
    return BackboneWithFPN(features, return_layers, info.channels(), out_channels, extra_blocks, norm_layer)


def feature_table(names: Sequence[str] | None = None, img_size: int = 224) -> list[dict[str, Any]]:
    """Per model: its feature levels (index, module, channels, stride, the map's ``size`` [H, W] for an
    ``img_size`` input), built and run on the meta device (shapes only: no weights, no arithmetic)."""
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size}")
    rows = []
    for name in names if names is not None else list_models():
        with torch.device("meta"):
            levels = feature_info(create_model(name))
            # Run, not stride arithmetic: a size that is no multiple of 32 rounds up at each stride-2 layer.
            features = create_model(name, features_only=True, out_indices=tuple(range(len(levels)))).eval()
            maps = features(torch.empty(1, features.in_chans, img_size, img_size))
        for level, feature_map in zip(levels, maps, strict=True):
            level["size"] = list(feature_map.shape[-2:])
        rows.append({"name": name, "levels": levels})
    return rows


def export_features_onnx(
    model: ShuffleNetFeatures,
    path: str | Path,
    img_size: int = 224,
    dynamic_batch: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export a feature model to ONNX with one output per level, named by its module (``"stage2"``, ...)."""
    if not isinstance(model, ShuffleNetFeatures):
        raise TypeError(f"expected create_model(..., features_only=True), got {type(model).__name__}")
    path = Path(path)
    check_output_path(path, overwrite)
    output_names = list(model.feature_info.module_name())
    # torch.export specialises a size-1 dimension, so a dynamic batch is traced with two images.
    x = torch.zeros(2 if dynamic_batch else 1, model.in_chans, img_size, img_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The exporter prints progress lines and warns about deprecations; the library stays quiet.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=[ONNX_INPUT],
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    return path
