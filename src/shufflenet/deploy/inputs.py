"""Input checks shared by every runtime, example inputs, and logit agreement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", 3))


def _crop_size(model: nn.Module) -> int:
    preprocessing = getattr(model, "preprocessing", None)
    return int(getattr(preprocessing, "crop_size", 224))


def default_example_input(model: nn.Module, batch_size: int = 1, img_size: int | None = None) -> Tensor:
    """A random batch of the size the model expects (its preprocessing crop size, else 224)."""
    size = img_size or _crop_size(model)
    return torch.randn(batch_size, _in_chans(model), size, size)


def check_batch(x: Any, channels: int, spatial: tuple[int, int] | None = None) -> Tensor:
    """Validate a float NCHW batch; returns it as a contiguous float32 tensor or raises a clear error."""
    if isinstance(x, np.ndarray):
        raise TypeError(f"expected a torch.Tensor, got a numpy array of shape {x.shape}; use torch.from_numpy(x)")
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a float torch.Tensor of shape (N, {channels}, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point batch, got dtype {x.dtype}; convert images to float and normalise "
            "them (Preprocessing.eval_transform does both)"
        )
    if x.dim() != 4 or x.shape[1] != channels:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"expected a batch of shape (N, {channels}, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError("got an empty batch (N = 0)")
    if spatial is not None and tuple(x.shape[2:]) != tuple(spatial):
        raise ValueError(
            f"this compiled model takes {spatial[0]}x{spatial[1]} images, got {x.shape[2]}x{x.shape[3]}; "
            f"resize the input, or compile again with an example_input of that size"
        )
    if x.device.type != "cpu":
        x = x.cpu()
    return x.float().contiguous() if x.dtype != torch.float32 or not x.is_contiguous() else x


def agreement(reference: Tensor, other: Tensor) -> Mapping[str, float]:
    """Max abs difference and top-1 agreement (fraction) between two logit tensors of the same batch."""
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    diff = (reference.float() - other.float()).abs().max().item()
    top1 = (reference.argmax(1) == other.argmax(1)).float().mean().item()
    return {"max_abs_diff": diff, "top1_agreement": top1}
