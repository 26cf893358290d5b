"""Other projects' checkpoint layouts, one module per source; importing this package registers their adapters.

A new format goes in its own module here: describe it as a :class:`~shufflenet.checkpoints.formats.layout.Layout`
(marker, key map, shape inference, preprocessing) and add it to :data:`LAYOUTS`, or register any
:class:`~shufflenet.checkpoints.adapters.FormatAdapter` for layouts that a key map cannot express.
"""

from __future__ import annotations

from shufflenet.checkpoints.adapters import register_adapter
from shufflenet.checkpoints.formats import megvii, megvii_plus, mmpretrain, torchvision
from shufflenet.checkpoints.formats.layout import Layout, adapter

# Every layout is tried before the refusal of megvii's plain v2 files, whose branch_main keys V2+ files share.
LAYOUTS: tuple[Layout, ...] = (
    megvii.MEGVII_V1,
    mmpretrain.MMPRETRAIN_V1,
    mmpretrain.MMPRETRAIN_V2,
    megvii_plus.MEGVII_V2_PLUS,
)

for _layout in LAYOUTS:
    register_adapter(adapter(_layout))
register_adapter(megvii.MEGVII_V2_REJECTION)

__all__ = ["LAYOUTS", "Layout", "megvii", "megvii_plus", "mmpretrain", "torchvision"]
