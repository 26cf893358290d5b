"""Building blocks shared by ShuffleNet v1 and v2: channel shuffle and conv-BN(-ReLU)."""

# No `from __future__ import annotations` in models/: torch.fx copies forward's annotations into the
# code it generates, and TorchScript cannot resolve them as strings (FX then torch.jit.script fails).
import torch
from torch import Tensor, nn


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Shuffle channels as the v1 paper defines it: reshape C to (groups, C/groups), transpose, flatten.

    Output channel ``j * groups + i`` is input channel ``i * (C / groups) + j``. A channels_last input
    stays channels_last (one copy, done in NHWC order), so the following convolutions need no conversion.
    Traceable by torch.fx (the graph shows the view/transpose/reshape) and scriptable by TorchScript.
    """
    batch, channels, height, width = x.size()
    check_groups(channels, groups)
    if groups == 1:
        return x
    per_group = channels // groups
    if is_channels_last(x):
        nhwc = x.permute(0, 2, 3, 1).reshape(batch, height, width, groups, per_group)
        nhwc = nhwc.transpose(3, 4).reshape(batch, height, width, channels)
        return nhwc.permute(0, 3, 1, 2)
    x = x.view(batch, groups, per_group, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def is_channels_last(x: Tensor) -> bool:
    """True for a 4-D tensor laid out channels_last (NHWC) only; False while torch.fx traces.

    The layout is a property of the values at run time, which an FX graph cannot branch on: a traced graph
    takes the NCHW path, which gives the same values (the layout only changes speed).
    """
    # Nested on purpose: TorchScript skips the body of `if not torch.jit.is_scripting()` only when it stands alone.
    if not torch.jit.is_scripting():  # noqa: SIM102
        if isinstance(x, torch.fx.Proxy):
            return False
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def shape_text(x: Tensor) -> str:
    """``x``'s shape as ``(2, 3, 4)`` for error messages (written so TorchScript compiles it)."""
    return "(" + ", ".join([str(size) for size in x.shape]) + ")"


# The checks below are torch.fx leaves (torch.fx.wrap): a traced graph keeps the call and runs it on the real
# tensor, where branching on a shape is allowed; TorchScript compiles them as they are.
@torch.fx.wrap
def check_groups(channels: int, groups: int) -> None:
    """Raise a clear error unless ``channels`` split into ``groups`` equal groups."""
    if channels % groups != 0:
        raise ValueError(f"channel_shuffle: {channels} channels do not split into {groups} groups")


@torch.fx.wrap
def check_same_shape(a: Tensor, b: Tensor) -> None:
    """Raise a clear error unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"interleave_channels: shapes differ, {shape_text(a)} and {shape_text(b)}")


def interleave_channels(a: Tensor, b: Tensor) -> Tensor:
    """``channel_shuffle(torch.cat((a, b), 1), 2)`` computed as one interleaving copy (same values).

    Output channel ``2i`` is ``a[:, i]`` and ``2i + 1`` is ``b[:, i]``: stacking on a new axis after C and
    flattening does the concat and the shuffle in one pass. Exported to ONNX it is Unsqueeze -> Concat ->
    Reshape, which OpenVINO runs 1.2-1.5x faster than a concat followed by Reshape -> Transpose ->
    Reshape (docs/deploy.md); the v2 units use it when ``fuse_shuffle`` is set for deployment.
    """
    check_same_shape(a, b)
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


@torch.fx.wrap
def check_input(x: Tensor, in_channels: int) -> None:
    """Raise a clear error unless ``x`` is an N x in_channels x H x W float tensor."""
    if x.dim() != 4 or x.size(1) != in_channels:
        raise ValueError(
            f"expected an input of shape (N, {in_channels}, H, W), got {shape_text(x)}; "
            "images must be RGB tensors in NCHW layout"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input, got dtype {x.dtype}; normalise images first")


GLOBAL_POOLS = ("avg", "")


class ClassifierMixin:
    """The timm-style model API shared by v1 and v2: features, head, classifier reset.

    As in timm: ``num_classes=0`` leaves no classifier (``fc`` is an ``nn.Identity``, the model returns the
    pooled features) and ``global_pool=""`` no pooling (the model returns the feature map).
    """

    # No class-level type annotations here: TorchScript reads them as module attribute types and cannot
    # resolve postponed ones such as "nn.Linear".

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - defined by subclasses
        """Feature map before global pooling."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool (unless ``global_pool`` is ""), then the classifier (skipped when ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean([2, 3])
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images (N, 3, H, W)."""
        check_input(x, self.in_chans)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (an ``nn.Identity`` when num_classes is 0)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A freshly initialised classifier for ``num_classes`` outputs (0: none); ``global_pool`` "avg" or ""."""
        check_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        self.fc = classifier(self.num_features, num_classes, device=device)
        self.num_classes = num_classes


def classifier(num_features: int, num_classes: int, device: torch.device | None = None) -> nn.Module:
    """``nn.Linear(num_features, num_classes)``, or ``nn.Identity`` for ``num_classes=0`` (timm's convention)."""
    if num_classes == 0:
        return nn.Identity()
    return nn.Linear(num_features, num_classes, device=device)


def check_num_classes(num_classes: int) -> None:
    """Raise a clear error for a class count below 0 (0 means no classifier, as in timm)."""
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")


def check_global_pool(global_pool: str) -> str:
    """Return ``global_pool`` if it is "avg" or "" (no pooling); raise a clear error otherwise."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    return global_pool
