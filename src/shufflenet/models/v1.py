"""ShuffleNet (v1) as Zhang et al. 2018 define it: Table 1 channels, Fig. 2 units.

Unit (Fig. 2b/c): 1x1 group conv + BN + ReLU -> channel shuffle -> 3x3 depthwise conv + BN (no ReLU)
-> 1x1 group conv + BN, then add the identity and ReLU (stride 1), or concatenate a 3x3 average-pooled
shortcut and ReLU (stride 2; the main branch then outputs out - in channels). Stage 2's first 1x1 conv
is not grouped (its input has only 24 channels).

Channel rule for widths other than 1x (``stage_channels``): megvii's official channels for g=3 and g=8
(so their checkpoints convert exactly); otherwise every stage width is ``s * Table1`` rounded to the
nearest multiple of 4g (so the bottleneck, out/4, splits into g groups) and the stem is ``24 * s``
rounded to the nearest multiple of g (so out - in of stage 2's stride-2 unit splits into g groups).

``shuffle_order``: ``"paper"`` (default) reshapes C to (g, C/g) and transposes, as Sec. 3.1 and Fig. 1
define it. ``"megvii"`` applies the inverse permutation, reshaping to (C/g, g), as megvii-model/
ShuffleNet-Series's v1 code does; its g=8 0.5x/1x/1.5x checkpoints need it to load exactly (no
within-group relabelling of the paper order reproduces them; see docs/pretrained.md). g=3 and g=8 2x
files convert onto the paper order.
"""

import torch
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.models.ops import (
    ClassifierMixin,
    channel_shuffle,
    check_global_pool,
    check_num_classes,
    classifier,
    conv_bn,
    make_divisible,
    stem,
)

SHUFFLE_ORDERS = ("paper", "megvii")


def stage_channels(groups: int, width_mult: float) -> tuple[int, int, int, int]:
    """Stem and stage 2/3/4 output channels for ``groups`` and ``width_mult`` (see module docstring)."""
    if groups not in tables.V1_TABLE1_STAGE_CHANNELS:
        raise ValueError(f"ShuffleNet v1 groups={groups} is not in paper Table 1; valid: {tables.V1_GROUPS}")
    if width_mult not in tables.V1_WIDTHS:
        raise ValueError(f"ShuffleNet v1 width {width_mult} is not supported; valid: {tables.V1_WIDTHS}")
    if (groups, width_mult) in tables.V1_MEGVII_CHANNELS:
        return tables.V1_MEGVII_CHANNELS[(groups, width_mult)]
    stem = make_divisible(tables.V1_STEM_CHANNELS_1X * width_mult, groups)
    stages = [
        make_divisible(c * width_mult, tables.V1_BOTTLENECK_RATIO * groups)
        for c in tables.V1_TABLE1_STAGE_CHANNELS[groups]
    ]
    return (stem, stages[0], stages[1], stages[2])


class ShuffleUnit(nn.Module):
    """The v1 unit of Fig. 2(b) (stride 1, add) and Fig. 2(c) (stride 2, avg-pool shortcut + concat)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        group_first_conv: bool = True,
        shuffle_order: str = "paper",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if shuffle_order not in SHUFFLE_ORDERS:
            raise ValueError(f"shuffle_order must be one of {SHUFFLE_ORDERS}, got {shuffle_order!r}")
        self.stride = stride
        self.groups = groups
        self.shuffle_order = shuffle_order
        bottleneck = out_channels // tables.V1_BOTTLENECK_RATIO
        # Reshaping to (C/g, g) before the transpose (megvii) is channel_shuffle with C/g groups: the inverse.
        # Fixed here, from the channel count, so forward has no shape arithmetic (torch.fx, TorchScript).
        self.shuffle_groups = bottleneck // groups if shuffle_order == "megvii" else groups
        main_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if group_first_conv else 1
        for name, value in (("input", in_channels), ("bottleneck", bottleneck), ("main-branch output", main_out)):
            if value <= 0 or value % groups:
                raise ValueError(f"{name} channels {value} must be a positive multiple of groups={groups}")
        self.compress = conv_bn(in_channels, bottleneck, 1, groups=first_groups, relu=True)
        self.depthwise = conv_bn(bottleneck, bottleneck, 3, stride=stride, groups=bottleneck, relu=False)
        self.expand = conv_bn(bottleneck, main_out, 1, groups=groups, relu=False)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit."""
        out = self.shuffle(self.compress(x))
        out = self.expand(self.depthwise(out))
        if self.stride == 1:
            return torch.relu(out + x)
        return torch.relu(torch.cat((self.shortcut(x), out), dim=1))

    def shuffle(self, x: Tensor) -> Tensor:
        """The channel shuffle between the first 1x1 conv and the depthwise conv, in ``shuffle_order``."""
        if self.groups == 1:
            return x
        return channel_shuffle(x, self.shuffle_groups)


class ShuffleNetV1(ClassifierMixin, nn.Module):
    """ShuffleNet v1 (Table 1): conv1 3x3/2, maxpool 3x3/2, stages 2-4 (repeats 1+3, 1+7, 1+3), pool, fc."""

    def __init__(
        self,
        groups: int = 3,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        shuffle_order: str = "paper",
        small_input: bool = False,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        channels = stage_channels(groups, width_mult)
        self.groups = groups
        self.shuffle_order = shuffle_order
        self.width_mult = width_mult
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stage_out_channels = list(channels)

        # small_input: the tiny-image stem (ops.stem; off by default, the paper's stem is stride 4).
        self.small_input = small_input
        self.conv1, self.maxpool, self.stem_reduction = stem(in_chans, channels[0], small_input)
        self.stage2: nn.Sequential
        self.stage3: nn.Sequential
        self.stage4: nn.Sequential
        in_channels = channels[0]
        for stage, repeats, out_channels in zip((2, 3, 4), tables.V1_STAGE_REPEATS, channels[1:], strict=True):
            units = [ShuffleUnit(in_channels, out_channels, 2, groups, stage != 2, shuffle_order=shuffle_order)]
            units += [
                ShuffleUnit(out_channels, out_channels, 1, groups, shuffle_order=shuffle_order)
                for _ in range(repeats - 1)
            ]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            in_channels = out_channels
        # timm's names: num_features (channels of forward_features), head_hidden_size (of pre_logits).
        self.num_features = self.head_hidden_size = in_channels
        self.global_pool = check_global_pool(global_pool)
        self.fc = classifier(in_channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after stage 4 (N, num_features, H/32, W/32; H/16 with small_input)."""
        x = self.maxpool(self.conv1(x))
        return self.stage4(self.stage3(self.stage2(x)))
