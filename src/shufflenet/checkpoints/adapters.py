"""The registry of foreign checkpoint layouts: one :class:`FormatAdapter` per layout we can convert.

Foreign layouts (other projects' key names) are adapted at the boundary; the models are never bent to fit a
file. The built-in adapters live in :mod:`shufflenet.checkpoints.formats`, one module per source project.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from shufflenet.transforms import Preprocessing


@dataclass
class FormatAdapter:
    """Recognises one foreign checkpoint layout and converts it to our keys for a given model."""

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, Any], nn.Module], tuple[dict[str, Tensor], Preprocessing | None]]


_ADAPTERS: list[FormatAdapter] = []


def register_adapter(adapter: FormatAdapter) -> None:
    """Add a foreign-format adapter (tried in registration order before the plain layout)."""
    _ADAPTERS.append(adapter)


def registered_adapters() -> tuple[FormatAdapter, ...]:
    """The adapters :func:`~shufflenet.checkpoints.load_pretrained` tries, in order."""
    return tuple(_ADAPTERS)
