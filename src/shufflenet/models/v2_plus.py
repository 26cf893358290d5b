"""ShuffleNetV2+ Small / Medium / Large: the ShuffleNet V2 authors' extension in megvii-model/ShuffleNet-Series.

The V2 unit with 3x3/5x5/7x7 depthwise kernels, an Xception-style unit, squeeze-excitation (SE) and h-swish,
built from ``shufflenet.tables`` (V2_PLUS_*). The network function is the official code's, so its checkpoints
convert with identical logits (``shufflenet.checkpoints.formats.megvii_plus``); parameter counts equal it.

Channel layout (megvii's, not torchvision's): a unit's output is ``cat(shortcut or projection, main branch)``
with no shuffle after it; a stride-1 unit starts by handing on the *even* channels as the shortcut and the
*odd* channels to the main branch (``channel_shuffle`` with C/2 groups, then the two halves). torchvision's v2
instead shuffles after the concat and splits into the first and second half; the two are different channel
orders of the same family, and these modules keep megvii's so that features and weights are theirs.

Two departures that change no output at 224x224: global average pooling is a mean over H and W (theirs is
``AvgPool2d(7)``, which only fits 224x224 inputs), and h-swish / hard-sigmoid are torch's ``nn.Hardswish`` /
``nn.Hardsigmoid`` (``x * relu6(x + 3) / 6``, ``relu6(x + 3) / 6``: their ``clamp(x + 3, 0, 6) / 6``).
"""

import torch
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.models.ops import ClassifierMixin, channel_shuffle, check_global_pool, check_num_classes, conv_bn


def _activation(hswish: bool) -> nn.Module:
    return nn.Hardswish() if hswish else nn.ReLU(inplace=True)


class SqueezeExcite(nn.Module):
    """SE with BatchNorm inside: global mean, 1x1 C -> C/4, BN, ReLU, 1x1 C/4 -> C, hard-sigmoid, scale ``x``."""

    def __init__(self, channels: int, reduction: int = tables.V2_PLUS_SE_REDUCTION) -> None:
        super().__init__()
        # conv, BN, ReLU in one Sequential, so that deployment folds this BN like every other (deploy.folding)
        self.squeeze = conv_bn(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` times its per-channel gate in [0, 1]."""
        scale = self.gate(self.expand(self.squeeze(x.mean((2, 3), keepdim=True))))
        return x * scale


def _dw_pw(in_channels: int, out_channels: int, kernel: int, stride: int) -> list[nn.Module]:
    """Depthwise k x k conv + BN, then 1x1 conv + BN (the activation is the caller's)."""
    depthwise = conv_bn(in_channels, in_channels, kernel, stride, groups=in_channels, relu=False)
    return [*depthwise, *conv_bn(in_channels, out_channels, 1, relu=False)]


class PlusUnit(nn.Module):
    """A ShuffleNetV2+ unit: ``kind`` 0/1/2 is the v2 unit with a 3x3/5x5/7x7 depthwise conv, 3 the Xception unit.

    ``branch_main`` (module indices as megvii's ``branch_main``): v2 unit 1x1, act, dw k x k, 1x1, act;
    Xception unit three (dw 3x3, 1x1, act) pairs; then SE if ``se``. Stride 2: ``branch_proj`` (dw k x k, 1x1,
    act) keeps the input width and ``branch_main`` makes the rest. Stride 1: the even channels pass through, the
    odd ones go through ``branch_main`` (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kind: int, hswish: bool, se: bool) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if kind not in (*tables.V2_PLUS_UNIT_KERNELS, tables.V2_PLUS_XCEPTION):
            raise ValueError(f"unit kind must be 0/1/2 (3x3/5x5/7x7 shuffle unit) or 3 (Xception), got {kind}")
        if kind == tables.V2_PLUS_XCEPTION and stride != 1:
            # The official block would put stride 2 on all three depthwise convs; its architecture never asks.
            raise ValueError("the Xception unit is used at stride 1 only (as in the official architecture)")
        if stride == 1 and out_channels != in_channels:
            raise ValueError(f"a stride-1 unit needs in == out channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.kind = kind
        self.kernel_size = tables.V2_PLUS_UNIT_KERNELS.get(kind, 3)
        # Stride 2: the projection keeps all input channels; stride 1: half of them pass through.
        branch_in = in_channels if stride == 2 else in_channels // 2
        mid = out_channels // 2
        main_out = out_channels - branch_in
        self.split_groups = in_channels // 2  # channel_shuffle with C/2 groups = [even channels, odd channels]
        main: list[nn.Module]
        if kind == tables.V2_PLUS_XCEPTION:
            main = [*_dw_pw(branch_in, mid, 3, stride), _activation(hswish)]
            main += [*_dw_pw(mid, mid, 3, 1), _activation(hswish)]
            main += [*_dw_pw(mid, main_out, 3, 1), _activation(hswish)]
        else:
            k = self.kernel_size
            main = [*conv_bn(branch_in, mid, 1, relu=False), _activation(hswish)]
            main += [*_dw_pw(mid, main_out, k, stride), _activation(hswish)]
        if se:
            main.append(SqueezeExcite(main_out))
        self.branch_main = nn.Sequential(*main)
        if stride == 2:
            self.branch_proj = nn.Sequential(*_dw_pw(branch_in, branch_in, self.kernel_size, 2), _activation(hswish))
        else:
            self.branch_proj = nn.Sequential()  # an empty Sequential as torchvision's v2 (no Optional module)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit; the output is [projection or even input channels, main branch]."""
        if self.stride == 1:
            even, odd = channel_shuffle(x, self.split_groups).chunk(2, dim=1)
            return torch.cat((even, self.branch_main(odd)), dim=1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), dim=1)


class ShuffleNetV2Plus(ClassifierMixin, nn.Module):
    """ShuffleNetV2+ (``size`` small/medium/large): conv1, stages 1-4, conv5, SE, hidden linear, dropout, fc.

    Module names follow this package (``conv1``, ``stage1``..``stage4``, ``conv5``, ``fc``); the checkpoint
    adapter maps megvii's (``first_conv``, ``features.N``, ``conv_last``, ``LastSE``, ``fc``, ``classifier``).
    """

    # The modules whose outputs are the feature levels (features_only): strides 4, 8, 16, 32 and conv5 at 32.
    feature_modules: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4", "conv5")

    def __init__(
        self,
        size: str = "medium",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = tables.V2_PLUS_DROPOUT,
        global_pool: str = "avg",
        architecture: tuple[int, ...] = tables.V2_PLUS_ARCHITECTURE,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if small_input:
            raise ValueError(
                "small_input drops v1/v2's max-pool; ShuffleNetV2+ has none (its stem is one stride-2 conv), so "
                "there is no tiny-image stem: train it without --small-input"
            )
        if size not in tables.V2_PLUS_STAGE_CHANNELS:
            raise ValueError(f"ShuffleNetV2+ size {size!r} is not one of {list(tables.V2_PLUS_STAGE_CHANNELS)}")
        repeats = tables.V2_PLUS_STAGE_REPEATS
        if len(architecture) != sum(repeats):
            raise ValueError(f"architecture has {len(architecture)} entries, the stages need {sum(repeats)}")
        head = tables.V2_PLUS_HEAD_CHANNELS
        self.size = size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stage_out_channels = [*tables.V2_PLUS_STAGE_CHANNELS[size], head]
        self.stem_reduction = 4  # conv1 (stride 2) and stage 1 (stride 2): the level-0 stride, as v1/v2's stem
        self.conv1 = nn.Sequential(*conv_bn(in_chans, tables.V2_PLUS_STEM_CHANNELS, 3, 2, relu=False), nn.Hardswish())
        self.stage1: nn.Sequential
        self.stage2: nn.Sequential
        self.stage3: nn.Sequential
        self.stage4: nn.Sequential
        in_channels, position = tables.V2_PLUS_STEM_CHANNELS, 0
        stages = zip(repeats, tables.V2_PLUS_STAGE_CHANNELS[size], strict=True)
        for stage, (count, out_channels) in enumerate(stages, start=1):
            units = []
            for i in range(count):
                units.append(
                    PlusUnit(
                        in_channels,
                        out_channels,
                        stride=2 if i == 0 else 1,
                        kind=architecture[position],
                        hswish=stage >= tables.V2_PLUS_HSWISH_FROM_STAGE,
                        se=stage >= tables.V2_PLUS_SE_FROM_STAGE,
                    )
                )
                in_channels, position = out_channels, position + 1
            setattr(self, f"stage{stage}", nn.Sequential(*units))
        self.conv5 = nn.Sequential(*conv_bn(in_channels, head, 1, relu=False), nn.Hardswish())
        self.num_features = head
        self.head_hidden_size = head
        self.head_se = SqueezeExcite(head)
        self.head_linear = nn.Sequential(nn.Linear(head, head, bias=False), nn.Hardswish())
        self.dropout = nn.Dropout(drop_rate)
        self.global_pool = check_global_pool(global_pool)
        self._initialize_weights()
        # The classifier last, so that its class count (0: none) changes no other initial weight of a seeded model.
        self.reset_classifier(num_classes)

    def _initialize_weights(self) -> None:
        """megvii's initialisation: conv N(0, 1/fan_in) (stem and SE convs N(0, 0.01)), linear N(0, 0.01),
        BN weight 1 and bias 1e-4."""
        special = {id(module) for module in self.conv1.modules()}
        for se in (module for module in self.modules() if isinstance(module, SqueezeExcite)):
            special |= {id(module) for module in se.modules()}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                std = 0.01 if id(module) in special else 1.0 / module.weight.shape[1]
                nn.init.normal_(module.weight, 0, std)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.constant_(module.bias, 1e-4)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after conv5 (N, 1280, H/32, W/32)."""
        x = self.conv1(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.conv5(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global mean, SE, the 1280 -> 1280 linear with h-swish (``pre_logits`` stops here), dropout, fc.

        With ``global_pool=""`` (timm's "no pooling") the head is skipped and the feature map returned: its SE
        and linear work on pooled features only.
        """
        if self.global_pool == "":
            return x
        x = self.head_se(x.mean((2, 3), keepdim=True)).flatten(1)
        x = self.head_linear(x)
        if pre_logits:
            return x
        return self.fc(self.dropout(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh bias-free classifier (megvii's N(0, 0.01)) for ``num_classes`` outputs (0: none); timm's pools."""
        check_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.fc = _classifier(self.head_hidden_size, num_classes, device=self.conv1[0].weight.device)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, 0, 0.01)
        self.num_classes = num_classes


def _classifier(features: int, num_classes: int, device: torch.device | None = None) -> nn.Module:
    """megvii's bias-free classifier; ``nn.Identity`` for ``num_classes=0`` (timm's convention)."""
    if num_classes == 0:
        return nn.Identity()
    return nn.Linear(features, num_classes, bias=False, device=device)
