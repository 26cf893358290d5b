"""megvii's ShuffleNetV2+ as its files name it, written from the facts of ShuffleNetV2+/network.py and blocks.py.

An independent reference for the tests (imported by name: tests/ is on sys.path): module names and the
Sequential indices of its state_dict keys, its activations written as clamp(x + 3, 0, 6) / 6, its even/odd
channel split, its AvgPool2d(7) head (so 224x224 inputs only, as theirs) and its 1000-class classifier.
Nothing here is imported from shufflenet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# network.py: stage_out_channels[1:] per model size (stem, stages 1-4, conv_last).
SIZES = {
    "Large": (16, 68, 168, 336, 672, 1280),
    "Medium": (16, 48, 128, 256, 512, 1280),
    "Small": (16, 36, 104, 208, 416, 1280),
}
REPEATS = (4, 4, 8, 4)
ARCHITECTURE = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)


class HardSwish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * (torch.clamp(x + 3, 0, 6) / 6)


class SqueezeExcite(nn.Module):
    """Their SELayer on (N, C, H, W): ``SE_opr`` = pool, 1x1 C -> C/4, BN, ReLU, 1x1 C/4 -> C; hard-sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.SE_opr = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // 4, 1, bias=False),
            nn.BatchNorm2d(channels // 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 4, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * (torch.clamp(self.SE_opr(x) + 3, 0, 6) / 6)


def activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "ReLU" else HardSwish()


def even_odd(x: Tensor) -> tuple[Tensor, Tensor]:
    """Their channel_shuffle: the even channels and the odd channels."""
    n, c, h, w = x.shape
    x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class Unit(nn.Module):
    """Their ``Shufflenet`` (kernel 3/5/7) and ``Shuffle_Xception`` blocks in one: branch_main, branch_proj."""

    def __init__(self, inp: int, oup: int, stride: int, kind: int, act: str, se: bool) -> None:
        super().__init__()
        mid, outputs = oup // 2, oup - inp
        self.stride = stride
        if kind == 3:
            k = 3
            main: list[nn.Module] = [
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                activation(act),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                nn.Conv2d(mid, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                activation(act),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                nn.Conv2d(mid, outputs, 1, bias=False),
                nn.BatchNorm2d(outputs),
                activation(act),
            ]
        else:
            k = (3, 5, 7)[kind]
            main = [
                nn.Conv2d(inp, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                activation(act),
                nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                nn.Conv2d(mid, outputs, 1, bias=False),
                nn.BatchNorm2d(outputs),
                activation(act),
            ]
        if se:
            main.append(SqueezeExcite(outputs))
        self.branch_main = nn.Sequential(*main)
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(inp, inp, k, stride, k // 2, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, inp, 1, bias=False),
                nn.BatchNorm2d(inp),
                activation(act),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            proj, main = even_odd(x)
            return torch.cat((proj, self.branch_main(main)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class MegviiV2Plus(nn.Module):
    """Their ShuffleNetV2_Plus(architecture, model_size): first_conv, features.N, conv_last, LastSE, fc, classifier."""

    def __init__(self, size: str, n_class: int = 1000) -> None:
        super().__init__()
        channels = SIZES[size]
        self.first_conv = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), HardSwish())
        units, index, cin = [], 0, channels[0]
        for stage, repeats in enumerate(REPEATS):
            cout = channels[stage + 1]
            for i in range(repeats):
                inp, stride = (cin, 2) if i == 0 else (cin // 2, 1)
                act = "HS" if stage >= 1 else "ReLU"
                units.append(Unit(inp, cout, stride, ARCHITECTURE[index], act, se=stage >= 2))
                index += 1
                cin = cout
        self.features = nn.Sequential(*units)
        self.conv_last = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), HardSwish())
        self.globalpool = nn.AvgPool2d(7)
        self.LastSE = SqueezeExcite(1280)
        self.fc = nn.Sequential(nn.Linear(1280, 1280, bias=False), HardSwish())
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Sequential(nn.Linear(1280, n_class, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_last(self.features(self.first_conv(x)))
        x = self.LastSE(self.globalpool(x))
        return self.classifier(self.dropout(self.fc(x.contiguous().view(-1, 1280))))


def randomize(model: nn.Module, sample: Tensor, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics of a realistic scale: the BN statistics of ``sample``, then perturbed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.empty_like(module.weight).uniform_(0.5, 1.5, generator=generator))
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.momentum = None  # cumulative average: the statistics of the sample batch
                module.reset_running_stats()
        model.train()(sample)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                std = module.running_var.sqrt()
                module.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=generator))
                module.running_var.mul_(torch.empty_like(std).uniform_(0.5, 2.0, generator=generator))
    return model.eval()


def bgr_0_255(crop: Tensor) -> Tensor:
    """Their ToBGRTensor (v1 and V2+ alike) on a uint8 RGB (3, H, W) crop: BGR, 0-255 floats, no mean/std."""
    array = crop.permute(1, 2, 0).numpy()[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


def save_megvii(model: nn.Module, path: Path) -> Path:
    """As their train.py saves it from nn.DataParallel: ``{'state_dict': ...}`` with ``module.`` prefixes."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path
