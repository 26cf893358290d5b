"""Building blocks shared by ShuffleNet v1 and v2: channel shuffle and conv-BN(-ReLU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Shuffle channels as the v1 paper defines it: reshape C to (groups, C/groups), transpose, flatten.

    Output channel ``j * groups + i`` is input channel ``i * (C / groups) + j``. A channels_last input
    stays channels_last (one copy, done in NHWC order), so the following convolutions need no conversion.
    """
    batch, channels, height, width = x.shape
    if channels % groups != 0:
        raise ValueError(f"channel_shuffle: {channels} channels do not split into {groups} groups")
    per_group = channels // groups
    if groups == 1:
        return x
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(batch, height, width, groups, per_group)
        nhwc = nhwc.transpose(3, 4).reshape(batch, height, width, channels)
        return nhwc.permute(0, 3, 1, 2)
    x = x.view(batch, groups, per_group, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def interleave_channels(a: Tensor, b: Tensor) -> Tensor:
    """``channel_shuffle(torch.cat((a, b), 1), 2)`` computed as one interleaving copy (same values).

    Output channel ``2i`` is ``a[:, i]`` and ``2i + 1`` is ``b[:, i]``: stacking on a new axis after C and
    flattening does the concat and the shuffle in one pass. Exported to ONNX it is Unsqueeze -> Concat ->
    Reshape, which OpenVINO runs 1.2-1.5x faster than a concat followed by Reshape -> Transpose ->
    Reshape (docs/deploy.md); the v2 units use it when ``fuse_shuffle`` is set for deployment.
    """
    if a.shape != b.shape:
        raise ValueError(f"interleave_channels: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.stack((a, b), dim=2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        """Shuffle the channels of ``x``."""
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return f"groups={self.groups}"


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    stride: int = 1,
    groups: int = 1,
    relu: bool = True,
) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d (+ ReLU); keys ``0`` (conv), ``1`` (bn) as in torchvision."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def stem(in_chans: int, out_channels: int, small_input: bool = False) -> tuple[nn.Sequential, nn.Module, int]:
    """conv1, the max-pool and their output stride: the papers' (conv1 3x3/2, max-pool 3x3/2: stride 4) or
    the tiny-image stem (``small_input``: no max-pool, stride 2; measured in docs/training.md).

    Both have the same modules' weights (the max-pool has none; without it ``maxpool`` is an ``nn.Identity``),
    so the state_dict keys are the same and a checkpoint of either loads into the other.
    """
    conv1 = conv_bn(in_chans, out_channels, 3, stride=2)
    if small_input:
        return conv1, nn.Identity(), 2
    return conv1, nn.MaxPool2d(kernel_size=3, stride=2, padding=1), 4


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (ties up), never below ``divisor``."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


def check_input(x: Tensor, in_channels: int) -> None:
    """Raise a clear error unless ``x`` is an N x in_channels x H x W float tensor."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected an input of shape (N, {in_channels}, H, W), got {tuple(x.shape)}; "
            "images must be RGB tensors in NCHW layout"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input, got dtype {x.dtype}; normalise images first")


class ClassifierMixin:
    """The timm-style model API shared by v1 and v2: features, head, classifier reset."""

    fc: nn.Linear
    num_features: int
    in_chans: int

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - defined by subclasses
        """Feature map before global pooling."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, then the classifier (skipped when ``pre_logits``)."""
        x = x.mean([2, 3])
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images (N, 3, H, W)."""
        check_input(x, self.in_chans)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs."""
        check_num_classes(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes, device=self.fc.weight.device)
        self.num_classes = num_classes


def check_num_classes(num_classes: int) -> None:
    """Raise a clear error for a class count below 1."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
