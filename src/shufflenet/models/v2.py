"""ShuffleNet V2 (Ma et al. 2018), module and key names identical to torchvision's ``shufflenetv2.py``.

A torchvision ``.pth`` therefore loads with ``strict=True`` and gives identical outputs.
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
    interleave_channels,
    stem,
)


class InvertedResidual(nn.Module):
    """The v2 unit: channel split (stride 1) or two branches (stride 2), concat, shuffle (Fig. 3c/d)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        # Deployment switch (not a weight): concat + shuffle as one interleaving copy, same values.
        self.fuse_shuffle = False
        branch_features = out_channels // 2
        if stride == 1 and in_channels != 2 * branch_features:
            raise ValueError(f"a stride-1 unit needs in == out channels, got {in_channels} -> {out_channels}")
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit."""
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            left, right = x1, self.branch2(x2)
        else:
            left, right = self.branch1(x), self.branch2(x)
        if self.fuse_shuffle:
            return interleave_channels(left, right)
        return channel_shuffle(torch.cat((left, right), dim=1), 2)


class ShuffleNetV2(ClassifierMixin, nn.Module):
    """ShuffleNet V2 of paper Table 5: conv1, maxpool, stages 2-4, conv5, global pool, fc."""

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        stages_repeats: tuple[int, int, int] = tables.V2_STAGE_REPEATS,
        small_input: bool = False,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if width_mult not in tables.V2_TABLE5_CHANNELS:
            raise ValueError(
                f"ShuffleNet V2 width {width_mult} is not in paper Table 5; "
                f"valid widths: {sorted(tables.V2_TABLE5_CHANNELS)}"
            )
        channels = tables.V2_TABLE5_CHANNELS[width_mult]
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
        for stage, repeats, out_channels in zip((2, 3, 4), stages_repeats, channels[1:4], strict=True):
            units = [InvertedResidual(in_channels, out_channels, 2)]
            units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = conv_bn(in_channels, channels[4], 1)
        # timm's names: num_features (channels of forward_features), head_hidden_size (of pre_logits).
        self.num_features = self.head_hidden_size = channels[4]
        self.global_pool = check_global_pool(global_pool)
        self.fc = classifier(channels[4], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after conv5 (N, num_features, H/32, W/32; H/16 with small_input)."""
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)
