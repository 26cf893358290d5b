"""ShuffleNet v1 unit algebra: relabelling a foreign v1 unit whose shuffle sits elsewhere onto ours, exactly.

megvii-model/ShuffleNet-Series and mmpretrain shuffle after the depthwise conv, we (Fig. 2) before it. The
depthwise conv and its BN act per channel, so moving the shuffle in front of them only relabels their
channels. mmpretrain's shuffle is the paper's, so that relabelling is all. megvii's is the inverse
permutation (reshape to (C/g, g)): a first-conv channel of group a then reaches second-conv group k by
another route. Outputs can still match exactly when, for every (a, k), both permutations route as many
channels from a to k: pairing the channels of each (a, k) cell permutes the first 1x1 conv's outputs (and BN)
within their group, the depthwise conv/BN with them, and the second 1x1 conv's inputs within each group.
That holds for every g=3 size and g=8 2x; g=8 0.5x/1x/1.5x fail it (e.g. 6 channels per group), so those
load into a model built with ``shuffle_order="megvii"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shufflenet.checkpoints.files import CheckpointError
from shufflenet.models import ShuffleNetV1

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class ShuffleOrderError(CheckpointError):
    """The file's v1 shuffle cannot be relabelled onto the model's ``shuffle_order``; the other order works."""

    def __init__(self, message: str, needed: str) -> None:
        super().__init__(message)
        self.needed = needed


def shuffle_sources(channels: int, groups: int, order: str) -> Tensor:
    """``src[j]``: the channel that lands at position ``j`` after a shuffle in ``order`` (paper or megvii)."""
    index = torch.arange(channels)
    if order == "paper":  # reshape (g, C/g), transpose, flatten (Sec. 3.1)
        return index.view(groups, channels // groups).t().flatten()
    if order == "megvii":  # reshape (C/g, g), transpose, flatten: the inverse
        return index.view(channels // groups, groups).t().flatten()
    raise ValueError(f"unknown shuffle order {order!r}; valid: 'paper', 'megvii'")


@dataclass(frozen=True)
class UnitPermutation:
    """How one foreign v1 unit's tensors are relabelled for ours (indices into the foreign tensors)."""

    compress: Tensor  # our first-conv output m' <- their m (within the same group)
    depthwise: Tensor  # our depthwise channel j' <- their m
    expand: list[Tensor]  # per group k: our in-group input i' <- their in-group input


def unit_permutation(
    channels: int, groups: int, compress_groups: int, ours: Tensor, theirs: Tensor
) -> UnitPermutation | None:
    """Relabelling that makes our unit (shuffle ``ours`` before the depthwise) equal theirs (``theirs`` after).

    ``ours``/``theirs`` are shuffle sources (see :func:`shuffle_sources`); None when no relabelling exists.
    """
    per_group = channels // groups
    compress_size = channels // compress_groups
    our_position, their_position = torch.argsort(ours), torch.argsort(theirs)
    cells: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for m in range(channels):
        a = m // compress_size
        cells.setdefault((a, int(our_position[m]) // per_group), ([], []))[0].append(m)
        cells.setdefault((a, int(their_position[m]) // per_group), ([], []))[1].append(m)
    compress = torch.empty(channels, dtype=torch.long)
    for our_channels, their_channels in cells.values():
        if len(our_channels) != len(their_channels):
            return None
        compress[our_channels] = torch.tensor(their_channels, dtype=torch.long)
    depthwise = compress[ours]
    source_position = their_position[depthwise]  # their position feeding our position j', same group
    expand = [source_position[k * per_group : (k + 1) * per_group] - k * per_group for k in range(groups)]
    return UnitPermutation(compress=compress, depthwise=depthwise, expand=expand)


def _permute_unit(state: dict[str, Tensor], prefix: str, perm: UnitPermutation, groups: int) -> None:
    for part, index in (("compress", perm.compress), ("depthwise", perm.depthwise)):
        state[f"{prefix}.{part}.0.weight"] = state[f"{prefix}.{part}.0.weight"][index]
        for name in _BN_KEYS:
            state[f"{prefix}.{part}.1.{name}"] = state[f"{prefix}.{part}.1.{name}"][index]
    weight = state[f"{prefix}.expand.0.weight"]
    rows = weight.shape[0] // groups
    state[f"{prefix}.expand.0.weight"] = torch.cat(
        [weight[k * rows : (k + 1) * rows][:, index] for k, index in enumerate(perm.expand)]
    )


def relabel_v1(state: dict[str, Tensor], model: ShuffleNetV1, source: str, their_order: str) -> None:
    """Relabel every unit of ``state`` (our keys, ``source``'s channel order) onto ``model``'s shuffle, in place.

    ``their_order`` is the file's shuffle ("paper" or "megvii"), applied after the depthwise conv.
    """
    for stage in (2, 3, 4):
        for index, unit in enumerate(getattr(model, f"stage{stage}")):
            if unit.groups == 1:
                theirs = ours = torch.arange(unit.depthwise[0].out_channels)
            else:
                channels = unit.depthwise[0].out_channels
                ours = unit.shuffle(torch.arange(channels, dtype=torch.float64).view(1, -1, 1, 1)).flatten().long()
                theirs = shuffle_sources(channels, unit.groups, their_order)
            perm = unit_permutation(len(ours), unit.groups, unit.compress[0].groups, ours, theirs)
            if perm is None:
                other = "megvii" if unit.shuffle_order == "paper" else "paper"
                raise ShuffleOrderError(
                    f"{source} unit stage{stage}.{index} ({len(ours) // unit.groups} channels per group) "
                    f"cannot be relabelled onto shuffle_order={unit.shuffle_order!r}; build the model with "
                    f"shuffle_order={other!r} (create_model(name, shuffle_order={other!r}, weights=...)), or "
                    f"convert the file once with `shufflenet convert`, which records that option",
                    needed=other,
                )
            _permute_unit(state, f"stage{stage}.{index}", perm, unit.groups)
