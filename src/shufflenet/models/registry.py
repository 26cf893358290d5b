"""Model registry in the timm manner: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
# loader(model, name, weights): weights is a file, a publisher's name ("torchvision"), or None for the default one.
WeightsLoader = Callable[[nn.Module, str, str | Path | None], Any]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name: family, configuration and the papers' figures."""

    name: str
    family: str  # "shufflenet_v1", "shufflenet_v2" or "shufflenet_v2_plus"
    width_mult: float
    groups: int | None = None
    paper_mflops: float | None = None
    paper_mflops_source: str = ""
    paper_params: int | float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_BUILDERS: dict[str, ModelBuilder] = {}
_INFO: dict[str, ModelInfo] = {}
# Installed by shufflenet.checkpoints (hub.load_weights): models import no checkpoint code themselves.
_weights_loader: WeightsLoader | None = None


def set_weights_loader(loader: WeightsLoader) -> None:
    """Install the function ``create_model(name, weights=W)`` calls as ``loader(model, name, W)``."""
    global _weights_loader
    _weights_loader = loader


def register_model(info: ModelInfo, builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder`` under ``info.name``; returns the builder (usable as a decorator target)."""
    if info.name in _BUILDERS:
        raise ValueError(f"model name {info.name!r} is already registered")
    _BUILDERS[info.name] = builder
    _INFO[info.name] = info
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"shufflenet_v1_g3_*"``)."""
    return sorted(name for name in _BUILDERS if fnmatch.fnmatch(name, pattern))


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if n.startswith(name.rsplit("_x", 1)[0])][:6]
        hint = f"; did you mean one of {close}" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; `shufflenet models` or shufflenet.list_models() lists all "
            f"{len(_BUILDERS)} names"
        )


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``."""
    _check_name(name)
    return _INFO[name]


def model_builder(name: str) -> ModelBuilder:
    """The builder function registered for ``name``."""
    _check_name(name)
    return _BUILDERS[name]


def create_model(
    name: str,
    num_classes: int = 1000,
    weights: str | Path | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; with ``weights``, load weights into it (see shufflenet.checkpoints).

    ``weights`` is a file, or a publisher's name (``"torchvision"``, ``"mmpretrain"``) whose published ImageNet
    weights are downloaded, hash-checked and cached; ``pretrained=True`` is the model's default publisher.

    ``features_only=True`` returns the backbone: a module giving the list of feature maps at ``out_indices``
    (default strides 4, 8, 16, 32; see shufflenet.models.features), with the weights loaded and ``fc`` dropped.
    """
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature levels; pass features_only=True with it")
    model = model_builder(name)(num_classes=num_classes, **kwargs)
    if weights is not None or pretrained:
        if _weights_loader is None:
            raise RuntimeError("create_model(weights=...) needs the checkpoint loader: import shufflenet.checkpoints")
        _weights_loader(model, name, weights)
    if features_only:
        from shufflenet.models.features import ShuffleNetFeatures

        return ShuffleNetFeatures(model, out_indices)
    return model
