"""OpenVINO IR files (``.xml`` + ``.bin``) quantized by NNCF, with shufflenet's metadata in the model's rt_info.

An IR is two files side by side: ``model.xml`` (the graph, and the ``rt_info`` section ``shufflenet`` holding
the same JSON values as an exported ONNX file's ``shufflenet.*`` metadata: class names, preprocessing, int8
settings, calibration, accuracy) and ``model.bin`` (the weights). The int8 model is the fp32 ONNX export read
by OpenVINO and quantized by ``nncf.quantize`` (or ``nncf.quantize_with_accuracy_control``, which keeps the
layers that cost the most accuracy in fp32) with the preset and overflow fix of
:func:`shufflenet.deploy.quantize.choose_int8_settings` (``tool="nncf"``).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from shufflenet.deploy.backends import _require
from shufflenet.deploy.errors import DeployError, _first_line

IR_SUFFIX = ".xml"
RT_INFO_SECTION = "shufflenet"


@functools.cache
def openvino_core() -> Any:
    """The process's one ``ov.Core``, shared by every model and never released.

    OpenVINO's CPU plugin, created once per Core, installs its own alternate signal stack (sigaltstack) in
    the creating thread and frees it when the Core goes; it restores the stack it found only when it is
    still the current one. Two Cores released in creation order (not last-in first-out, as garbage
    collection does) therefore leave the thread's alternate stack pointing at unmapped memory, and the
    next signal handled there (SIGCHLD after a subprocess or DataLoader worker exits, with faulthandler
    on as under pytest) kills the process with SIGSEGV and no traceback. One Core, as OpenVINO
    recommends, creates the plugin once. Compile settings are per call, so sharing changes nothing else.
    """
    return _require("openvino").Core()


def is_ir(path: str | Path) -> bool:
    """Whether ``path`` names an OpenVINO IR (``.xml``) rather than an ONNX file."""
    return Path(path).suffix.lower() == IR_SUFFIX


def read_ir_model(path: str | Path) -> Any:
    """The ``openvino.Model`` of the IR at ``path``, with clear errors for a missing ``.xml`` or ``.bin``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OpenVINO IR {path} does not exist")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} does not exist: an OpenVINO IR is {path.name} plus {weights.name}; copy both"
        )
    try:
        return openvino_core().read_model(str(path), str(weights))
    except Exception as err:  # openvino raises RuntimeError subclasses with long messages
        raise DeployError(f"openvino cannot read {path} ({_first_line(err)}); quantize again") from None


def ir_metadata(model: Any, where: str | Path = "the model") -> dict[str, Any]:
    """The ``shufflenet`` rt_info of an ``openvino.Model`` as plain JSON values (preprocessing stays a dict)."""
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    meta = {}
    for key in model.get_rt_info()[RT_INFO_SECTION]:
        text = model.get_rt_info([RT_INFO_SECTION, key]).astype(str)
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError:
            raise DeployError(f"{where}: rt_info key {RT_INFO_SECTION}/{key} is not valid JSON") from None
    return meta


def save_ir(model: Any, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``model`` to ``path`` (.xml) and its .bin, ``metadata`` in rt_info; a reader never sees half a pair."""
    ov = _require("openvino")
    path = Path(path)
    for key, value in metadata.items():
        model.set_rt_info(json.dumps(value), [RT_INFO_SECTION, key])
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)  # keep the fp32 layers fp32
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return path


def _require_nncf() -> Any:
    try:
        import nncf
    except ImportError as err:
        raise ImportError(
            "an int8 OpenVINO IR is made by NNCF, which is not installed: pip install 'shufflenet[nncf]' "
            "(or write an ONNX file instead: --out FILE.onnx)"
        ) from err
    return nncf


def _top1_of_compiled(compiled: Any, items: Any) -> float:
    """Top-1 of an OpenVINO compiled model over (images, labels) batches: NNCF's validation function."""
    correct = total = 0
    for images, labels in items:
        logits = compiled(images)[compiled.output(0)]
        correct += int((np.argmax(logits, axis=1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def nncf_quantize(
    src: str | Path,
    calibration: Sequence[np.ndarray],
    settings: Any,
    accuracy_control: tuple[Sequence[Tensor], Tensor, float] | None = None,
) -> Any:
    """The fp32 ONNX file ``src`` as an int8 ``openvino.Model``, by NNCF with ``settings`` (an Int8Settings).

    ``calibration``: float NCHW batches, fed to NNCF as they are. NNCF averages each item's min/max, so
    whole batches give ranges near the global ones: on the digits demo (docs/deploy.md) batches of 32 kept
    top-1 at 0.975 (fp32 0.978) where one image per item gave 0.958.
    ``accuracy_control``: (validation batches, labels, max drop as a fraction) to run
    ``nncf.quantize_with_accuracy_control``, which returns layers to fp32 until top-1 is within the drop.
    """
    nncf = _require_nncf()
    model = openvino_core().read_model(str(src))
    images = [np.asarray(batch, dtype=np.float32) for batch in calibration]
    common = {
        "preset": nncf.QuantizationPreset(settings.preset),
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": len(images),  # items, here batches: all of them
    }
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(settings.overflow_fix))
    if accuracy_control is None:
        return nncf.quantize(model, nncf.Dataset(images), advanced_parameters=advanced, **common)
    val_batches, labels, max_drop = accuracy_control
    pairs, start = [], 0
    for batch in val_batches:
        pairs.append((torch.as_tensor(batch).numpy(), labels[start : start + len(batch)].numpy()))
        start += len(batch)
    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(images),
        nncf.Dataset(pairs, lambda pair: pair[0]),  # NNCF runs the images; the validation function gets both
        _top1_of_compiled,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=advanced,
        **common,
    )
