"""ShuffleNet as a backbone: multi-scale feature maps with timm's ``features_only`` / ``feature_info`` API.

Levels (``out_indices``), for v1 and v2 at every width:

* 0: the stem after the max-pool, stride 4
* 1, 2, 3: stages 2, 3, 4, strides 8, 16, 32
* 4 (v2 only, not in the default): conv5, the 1x1 conv after stage 4, stride 32

With the tiny-image stem (``small_input=True``, no max-pool) every stride is 2x smaller: 2, 4, 8, 16, 16.

ShuffleNetV2+ names its own levels (``feature_modules``): stages 1-4 at strides 4, 8, 16, 32 and conv5 at 32.

The channels come from the model (``stage_out_channels``, built from the papers' tables in
``shufflenet.tables``). The feature model keeps the classification model's module and key names
(``conv1.0.weight``, ``stage2.0.branch1.0.weight``, ...) and drops ``fc`` (and ``conv5`` unless level 4 is
selected), so a full checkpoint's weights load into it once the extra keys are left out, and timm's own
``FeatureListNet`` wrapped around the same model holds the same keys.
"""

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

# No `from __future__ import annotations` in models/: torch.fx copies forward's annotations into the
# code it generates, and TorchScript cannot resolve them as strings (FX then torch.jit.script fails).
import torch
from torch import Tensor, nn

from shufflenet.models.ops import check_input

# torch.fx.wrap patches a name in the module that calls it: this module's check_input is a traced leaf too.
torch.fx.wrap("check_input")

# Module whose output is level i; the stem's conv1 runs before level 0.
FEATURE_MODULES: tuple[str, ...] = ("maxpool", "stage2", "stage3", "stage4", "conv5")
# Output stride of each level: conv1 and the max-pool halve the input, then each stage's first unit.
FEATURE_REDUCTIONS: tuple[int, ...] = (4, 8, 16, 32, 32)
DEFAULT_OUT_INDICES: tuple[int, ...] = (0, 1, 2, 3)


def feature_modules(model: nn.Module) -> tuple[str, ...]:
    """The modules whose outputs are the levels: the model's ``feature_modules`` (V2+) or v1/v2's names."""
    return tuple(getattr(model, "feature_modules", FEATURE_MODULES))


def feature_info(model: nn.Module) -> list[dict[str, Any]]:
    """timm-style ``feature_info`` dicts (num_chs, reduction, module, index) of a ShuffleNet v1/v2, one per level.

    v1 has four levels (stem and stages 2-4); v2 a fifth, conv5.
    """
    channels = getattr(model, "stage_out_channels", None)
    if channels is None:
        raise TypeError(f"{type(model).__name__} is not a ShuffleNet v1/v2 model (it has no stage_out_channels)")
    # v1's stage_out_channels stop at stage 4, v2's go on to conv5: the levels are as many as the channels.
    levels = zip(channels, FEATURE_REDUCTIONS, feature_modules(model), strict=False)
    # The tiny-image stem (small_input) has stride stem_reduction instead of 4: every level is that much finer.
    stem_reduction = getattr(model, "stem_reduction", FEATURE_REDUCTIONS[0])
    return [
        {
            "num_chs": int(num_chs),
            "reduction": reduction * stem_reduction // FEATURE_REDUCTIONS[0],
            "module": module,
            "index": index,
        }
        for index, (num_chs, reduction, module) in enumerate(levels)
    ]


def resolve_out_indices(
    out_indices: Sequence[int] | None, num_levels: int, names: Sequence[str] = FEATURE_MODULES
) -> tuple[int, ...]:
    """Sorted, de-duplicated levels; negative indices count from the last level; errors name the valid range."""
    if out_indices is None:
        return DEFAULT_OUT_INDICES
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    resolved = set()
    for index in out_indices:
        if not isinstance(index, int) or not -num_levels <= index < num_levels:
            raise ValueError(
                f"out_indices entry {index!r} is not a level of this model; valid: 0..{num_levels - 1} "
                f"({', '.join(f'{i}={m}' for i, m in enumerate(names[:num_levels]))}) or negative"
            )
        resolved.add(index % num_levels)
    if not resolved:
        raise ValueError("out_indices is empty; give at least one level, e.g. (0, 1, 2, 3)")
    return tuple(sorted(resolved))


class FeatureInfo:
    """Channels, reduction (stride) and module name per level, with timm's ``FeatureInfo`` accessors.

    Without ``idx`` the accessors answer for the selected ``out_indices``; with an int or a list, for those levels.
    """

    def __init__(self, info: list[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = info
        self.out_indices = tuple(out_indices)

    def from_other(self, out_indices: Sequence[int]) -> "FeatureInfo":
        """The same levels with another selection."""
        return FeatureInfo(deepcopy(self.info), out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of the selected levels (``idx`` None), of level ``idx`` (int) or of levels ``idx`` (list)."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The info dicts (restricted to ``keys``) of the selected levels, or of ``idx``."""
        indices = self.out_indices if idx is None else idx
        if isinstance(indices, int):
            return self.info[indices] if keys is None else {k: self.info[indices][k] for k in keys}
        return [self.info[i] if keys is None else {k: self.info[i][k] for k in keys} for i in indices]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Feature channels."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Output stride (input size / feature-map size)."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Name of the module whose output the level is."""
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        """The info dict of level ``item`` (all levels, not only the selected)."""
        return self.info[item]

    def __len__(self) -> int:
        """Number of levels the model has (all, not only the selected)."""
        return len(self.info)


class ShuffleNetFeatures(nn.Module):
    """A ShuffleNet v1/v2 truncated after its last selected level; ``forward`` returns the list of feature maps."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = feature_info(model)
        modules = feature_modules(model)
        self.out_indices = resolve_out_indices(out_indices, len(info), modules)
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.in_chans = model.in_chans
        last = self.out_indices[-1]
        # conv1, then the modules of levels 0..last in forward order; fc (and conv5 unless asked for) are dropped.
        for name in ("conv1", *modules[: last + 1]):
            self.add_module(name, getattr(model, name))
        self.return_modules = [modules[i] for i in self.out_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the selected levels, shallowest first: (N, channels[i], H/stride[i], W/stride[i])."""
        check_input(x, self.in_chans)
        features: list[Tensor] = []
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_modules:
                features.append(x)
        return features
