"""BatchNorm folding and the eval-mode copy a model is exported from."""

from __future__ import annotations

import copy
import logging

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair inside a Sequential fused.

    Each pair becomes torch's ``fuse_conv_bn_eval``: W' = W * g / s, b' = (b - mean) * g / s + beta.
    The BatchNorm is replaced by ``nn.Identity`` so module indices (and state_dict keys of the other
    layers) stay put. ``model`` itself is not changed.
    """
    folded = copy.deepcopy(model).eval()
    count = _fold_in_place(folded)
    log.debug("folded %d BatchNorm layers", count)
    return folded


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, fuse_shuffle: bool = True) -> nn.Module:
    """The eval-mode copy the ONNX export (and so the onnxruntime and openvino backends) starts from.

    ``model`` itself is not changed. The torch backend and TorchScript use :func:`fold_batchnorm` alone:
    eager PyTorch was not faster with the fused shuffle (docs/deploy.md).

    ``fold_bn``: BatchNorm folded into the convolutions (:func:`fold_batchnorm`). ``fuse_shuffle``: each
    v2 unit computes its concat + channel shuffle as one interleaving copy
    (:func:`shufflenet.models.ops.interleave_channels`): the same values, exported as Unsqueeze -> Concat ->
    Reshape instead of Concat -> Reshape -> Transpose -> Reshape. v1's shuffles are left as they are.
    """
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    for module in prepared.modules():
        if hasattr(module, "fuse_shuffle"):
            module.fuse_shuffle = fuse_shuffle
    return prepared


def _fold_in_place(module: nn.Module) -> int:
    count = 0
    if isinstance(module, nn.Sequential):
        children = list(module)
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and conv.out_channels == bn.num_features
            ):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
                children[i + 1] = module[i + 1]
                count += 1
    for child in module.children():
        count += _fold_in_place(child)
    return count
