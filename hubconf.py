"""torch.hub entry points: one per registered model, e.g. ``torch.hub.load(repo, "shufflenet_v1_g3_x1_0")``.

``weights="torchvision"`` / ``"mmpretrain"`` (or ``pretrained=True``) downloads the published ImageNet weights
(hash-checked, cached in ``$TORCH_HOME/hub/checkpoints``). ``weights=PATH`` loads any file shufflenet reads:
our checkpoints (their model options and class names apply), torchvision ShuffleNet V2 ``.pth`` files, and
megvii / mmpretrain checkpoints (detected and converted). The model comes back in training mode, as torch.hub
models do; ``model.preprocessing`` says how to feed it. Only underscore names besides the entry points, so
``torch.hub.list`` shows models.
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
from pathlib import Path as _Path
from typing import Any as _Any

from torch import nn as _nn

dependencies = ["torch", "torchvision"]

# A hub checkout is not pip-installed: make its src/ importable (an installed copy keeps working).
_SRC = _Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in _sys.path:
    _sys.path.insert(0, str(_SRC))

_models = _importlib.import_module("shufflenet.models")
_checkpoints = _importlib.import_module("shufflenet.checkpoints")
_Preprocessing = _importlib.import_module("shufflenet.transforms").Preprocessing


def _load(name: str, weights: str | _Path | None = None, num_classes: int | None = None, **kwargs: _Any) -> _nn.Module:
    """Build ``name``; with ``weights``, load the file through the library (class count from the file unless given)."""
    if weights is None or _checkpoints.is_weights_name(weights):  # none, or published ones ("torchvision") by name
        return _models.create_model(name, num_classes=num_classes or 1000, weights=weights, **kwargs)
    raw = _checkpoints.read_file(weights)
    ours = raw.get("format") == _checkpoints.CHECKPOINT_FORMAT
    if ours and raw.get("arch") != name:
        raise _checkpoints.CheckpointError(
            f"{weights} holds {raw.get('arch')!r}, not {name!r}; load it with torch.hub.load(..., {raw.get('arch')!r})"
        )
    if ours and not kwargs and num_classes in (None, raw.get("num_classes")):
        return _checkpoints.load_model(weights).train()  # as saved: options, classes, preprocessing
    class_names = None
    if ours:
        # The file's model options unless overridden; load_pretrained refuses an override that contradicts them.
        kwargs = {**(raw.get("model_kwargs") or {}), **kwargs}
        if num_classes in (None, raw.get("num_classes")):
            num_classes, class_names = raw.get("num_classes"), raw.get("class_names")
    model = _models.create_model(name, num_classes=num_classes or _file_class_count(raw), **kwargs)
    report = _checkpoints.load_pretrained(model, weights)
    model.preprocessing = report.preprocessing or _Preprocessing()
    model.class_names = list(class_names) if class_names else [str(i) for i in range(model.fc.out_features)]
    return model


def _file_class_count(raw: dict[str, _Any]) -> int:
    """The classifier rows of a foreign file (torchvision, megvii, mmpretrain), else ImageNet's 1000."""
    state = _checkpoints.unwrap_state_dict(raw)
    keys = ("fc.weight", "classifier.0.weight", "head.fc.weight")
    return next((state[key].shape[0] for key in keys if key in state), 1000)


def _entry_point(name: str) -> _Any:
    info = _models.model_info(name)

    def entry(weights: str | _Path | None = None, num_classes: int | None = None, **kwargs: _Any) -> _nn.Module:
        return _load(name, weights, num_classes, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    groups = f", groups={info.groups}" if info.groups else ""
    entry.__doc__ = (
        f"{name}: {info.family} width {info.width_mult}{groups}.\n\n"
        "weights: optional checkpoint path (ours, torchvision, megvii or mmpretrain; foreign layouts are\n"
        "detected and converted exactly), or 'torchvision' / 'mmpretrain' for the published ImageNet weights\n"
        "(pretrained=True: the default publisher). num_classes: defaults to the file's (1000 without weights).\n"
        "Other keyword arguments go to the model (e.g. shuffle_order='megvii' for v1)."
    )
    return entry


for _name in _models.list_models():
    globals()[_name] = _entry_point(_name)
