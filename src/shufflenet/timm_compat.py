"""timm integration: every shufflenet model is a timm model once both are imported (``pip install shufflenet[timm]``).

After ``import shufflenet``, ``timm.create_model("shufflenet_v2_x1_0", features_only=True)`` builds our model
through timm's own ``build_model_with_cfg``, so timm's ``FeatureListNet``, ``feature_info`` and pretrained
loading apply unchanged. ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` loads a torchvision
``.pth``, a plain state_dict or one of our checkpoints (``.pt`` or ``.safetensors``): timm reads the file and
unwraps its ``state_dict``/``model`` key, and :func:`checkpoint_filter_fn` (timm's ``pretrained_filter_fn``
hook) checks the keys at that edge. megvii and mmpretrain files go through ``shufflenet convert`` first.

timm is never imported by ``import shufflenet``: if it is already imported the models are registered at once,
otherwise when it is imported later (a one-shot import hook on ``sys.meta_path``). timm ships no ShuffleNet
today; a name timm already has is left to timm and reported by :func:`register_timm_models`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from shufflenet.models import list_models, model_builder
from shufflenet.models.features import DEFAULT_OUT_INDICES, feature_info
from shufflenet.transforms import Preprocessing

CLASSIFIER = "fc"
FIRST_CONV = "conv1.0"

# timm's register_model reads the pretrained configs from the entrypoint module's ``default_cfgs``.
default_cfgs: dict[str, dict[str, Any]] = {}
__all__ = ["checkpoint_filter_fn", "default_cfgs", "register_timm_models", "register_when_timm_imported"]


def _pretrained_cfg() -> dict[str, Any]:
    pre = Preprocessing()  # torchvision's ImageNet preprocessing, which the torchvision weights expect
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, pre.crop_size, pre.crop_size),
        "pool_size": (pre.crop_size // 32, pre.crop_size // 32),
        "crop_pct": pre.crop_size / pre.resize_size,
        "interpolation": pre.interpolation,
        "mean": pre.mean,
        "std": pre.std,
        "first_conv": FIRST_CONV,
        "classifier": CLASSIFIER,
        "license": "mit",
    }


def _published_weights_cfg(name: str) -> dict[str, Any]:
    """The URL (its file name carries the sha256 prefix timm's ``check_hash`` reads), licence and eval crop of the
    model's torchvision weights, the files timm loads unchanged; nothing for models without them."""
    # lazy: checkpoint code stays out of the import path
    from shufflenet.checkpoints.pretrained import weights_of

    published = [w for w in weights_of(name) if w.source == "torchvision"]
    if not published:
        return {}
    weights = published[0]
    return {"url": weights.url, "license": "bsd-3-clause", "crop_pct": weights.preprocessing.crop_pct}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """timm's ``pretrained_filter_fn``: a torchvision or shufflenet state_dict -> exactly the model's keys.

    A classifier of another class count is dropped (timm leaves ``fc`` initialised); any other missing or
    mis-shaped key is an error naming it (the checks of ``shufflenet.checkpoints.load_pretrained``).
    """
    # lazy: checkpoint code stays out of the import path
    from shufflenet.checkpoints import unwrap_state_dict
    from shufflenet.checkpoints.loading import match_state_dict

    name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    hint = "; megvii/mmpretrain files: run `shufflenet convert` on them first"
    matched, _ = match_state_dict(unwrap_state_dict(state_dict), model.state_dict(), "checkpoint", name, hint=hint)
    return matched


def _model_with_feature_info(name: str, **kwargs: Any) -> nn.Module:
    model = model_builder(name)(**kwargs)
    model.feature_info = feature_info(model)  # what timm's FeatureListNet reads
    return model


def _build(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    from timm.models import build_model_with_cfg

    model = build_model_with_cfg(
        partial(_model_with_feature_info, name),
        name,
        pretrained,
        feature_cfg={"out_indices": DEFAULT_OUT_INDICES},
        pretrained_filter_fn=checkpoint_filter_fn,
        # checkpoint_filter_fn has checked every non-classifier key already.
        pretrained_strict=False,
        **kwargs,
    )
    if not kwargs.get("features_only"):
        # pool_size is forward_features' map at input_size: the tiny-image stem (small_input) doubles it.
        _, height, width = model.pretrained_cfg["input_size"]
        stride = model.feature_info[-1]["reduction"]
        model.pretrained_cfg["pool_size"] = (math.ceil(height / stride), math.ceil(width / stride))
    return model


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _build(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name  # timm registers a function under its __name__
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"shufflenet's {name} (see shufflenet.list_models())."
    return entrypoint


def register_timm_models(names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Register our models with timm; returns ``{"registered": [...], "skipped": [...]}`` (names timm already has).

    Calling it again registers nothing twice.
    """
    from timm.models import is_model, model_entrypoint, register_model

    registered, skipped = [], []
    module = sys.modules[__name__]
    for name in names or list_models():
        if is_model(name):
            if getattr(model_entrypoint(name), "__module__", None) != __name__:
                skipped.append(name)  # timm's own model of that name wins; never overwrite it
            continue
        default_cfgs[name] = {**_pretrained_cfg(), **_published_weights_cfg(name)}
        setattr(module, name, register_model(_entrypoint(name)))
        registered.append(name)
    return {"registered": registered, "skipped": skipped}


def _register_quietly() -> None:
    try:
        register_timm_models()
    except Exception as err:  # a timm release with another API must not break `import timm`
        warnings.warn(f"shufflenet could not register its models with timm: {err}", stacklevel=2)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Registers our models right after ``timm`` itself finishes importing, then removes itself."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """Let the normal finders find timm, and register our models once its module has executed."""
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register_quietly()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def register_when_timm_imported() -> None:
    """Register with timm now if it is imported, else when it is (without importing it ourselves)."""
    if sys.modules.get("timm") is not None:  # None: someone blocked the import on purpose
        _register_quietly()
    elif not any(isinstance(finder, _TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
