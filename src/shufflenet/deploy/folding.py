"""BatchNorm folding and the eval-mode copy a model is exported from."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` in eval mode: W' = W * g / s, b' = (b - mean) * g / s + beta."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = (
            bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        )
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (bias - bn.running_mean) * scale + (bn.bias if bn.affine else 0)
        fused.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        fused.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair inside a Sequential fused.

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
                module[i] = fold_conv_bn(conv, bn)
                module[i + 1] = nn.Identity()
                children[i + 1] = module[i + 1]
                count += 1
    for child in module.children():
        count += _fold_in_place(child)
    return count
