"""Backwards-compatible names: foreign checkpoint formats now live in :mod:`shufflenet.checkpoints.formats`.

megvii v1 and mmpretrain v1/v2 are :mod:`~shufflenet.checkpoints.formats.megvii` and
:mod:`~shufflenet.checkpoints.formats.mmpretrain`, the v1 unit algebra is
:mod:`~shufflenet.checkpoints.formats.v1_shuffle`, ``convert_checkpoint`` is in
:mod:`shufflenet.checkpoints.convert`.
"""

from __future__ import annotations

from shufflenet.checkpoints.convert import SOURCES, convert_checkpoint, detect_layout, infer_model_name
from shufflenet.checkpoints.formats import LAYOUTS
from shufflenet.checkpoints.formats.megvii import MEGVII_PREPROCESSING, MEGVII_V1
from shufflenet.checkpoints.formats.mmpretrain import MMPRETRAIN_PREPROCESSING, MMPRETRAIN_V1, MMPRETRAIN_V2
from shufflenet.checkpoints.formats.v1_shuffle import (
    ShuffleOrderError,
    UnitPermutation,
    shuffle_sources,
    unit_permutation,
)

__all__ = [
    "LAYOUTS",
    "MEGVII_PREPROCESSING",
    "MEGVII_V1",
    "MMPRETRAIN_PREPROCESSING",
    "MMPRETRAIN_V1",
    "MMPRETRAIN_V2",
    "SOURCES",
    "ShuffleOrderError",
    "UnitPermutation",
    "convert_checkpoint",
    "detect_layout",
    "infer_model_name",
    "shuffle_sources",
    "unit_permutation",
]
