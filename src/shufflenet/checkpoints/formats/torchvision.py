"""torchvision ShuffleNet V2 ``.pth`` files and any plain state_dict: our keys already, loaded unchanged.

Our v2 modules carry torchvision's names (``conv1``, ``stage2.0.branch2.3``, ``conv5``, ``fc``), so its
files need no key map; this is the layout :func:`~shufflenet.checkpoints.load_pretrained` falls back to when
no foreign adapter recognises a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from shufflenet.checkpoints.files import unwrap_state_dict
from shufflenet.transforms import Preprocessing

NAME = "state_dict"


def convert(raw: Mapping[str, Any], model: nn.Module) -> tuple[dict[str, Tensor], Preprocessing | None]:
    """The file's tensors as they are (wrappers and ``module.`` prefixes removed); no preprocessing recorded."""
    return unwrap_state_dict(raw), None


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet class names in torchvision's (sorted WordNet id) order; None if torchvision lacks them."""
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError:  # a private torchvision table; numbered classes without it
        return None
    return list(_IMAGENET_CATEGORIES)
