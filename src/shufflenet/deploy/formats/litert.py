"""LiteRT (TFLite): export with litert-torch, int8 with ai-edge-quantizer, verified in the ai-edge-litert interpreter.

The ``.tflite`` file takes NHWC float32 input (N, H, W, 3), as Android bitmaps come, and carries our metadata
(class names, preprocessing, input size) as a TFLite ``Metadata`` entry named ``shufflenet.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.export import model_metadata
from shufflenet.deploy.folding import fold_batchnorm
from shufflenet.deploy.formats.common import ExportResult, crop_size, quiet, require, verification_batch, verify
from shufflenet.deploy.quantize import _calibration_batches
from shufflenet.deploy.runtimes.litert import METADATA_NAME, TFLITE_IDENTIFIER, load_tflite
from shufflenet.fileio import atomic_path, check_output_path
from shufflenet.transforms import Preprocessing


def tflite_preprocessing(preprocessing: Preprocessing) -> dict[str, Any]:
    """Per-channel ``(pixel / 255 * pixel_scale - mean) / std`` as one multiply-add on 0-255 pixels."""
    scale = preprocessing.pixel_scale
    return {
        "layout": "NHWC",
        "pixel_format": preprocessing.channel_order,
        "pixel_multiplier": [scale / (255.0 * s) for s in preprocessing.std],
        "pixel_offset": [-m / s for m, s in zip(preprocessing.mean, preprocessing.std, strict=True)],
        "resize_size": preprocessing.resize_size,
        "crop_size": preprocessing.crop_size,
    }


# litert-torch prints progress lines, warns and logs through these.
_LOGGERS = ("absl", "litert_torch", "jax")


def _convert(module: nn.Module, size: int) -> bytes:
    """The fp32 .tflite bytes of ``module`` with an NHWC input of ``size`` x ``size``."""
    litert_torch = require("litert_torch", "TFLite export")
    nhwc = litert_torch.to_channel_last_io(module, args=[0])
    with tempfile.TemporaryDirectory() as tmp, quiet(*_LOGGERS):
        try:
            converted = litert_torch.convert(nhwc.eval(), (torch.zeros(1, size, size, 3),))
            converted.export(str(Path(tmp) / "model.tflite"))
        except Exception as err:
            raise DeployError(f"litert-torch could not convert the model: {str(err).strip()[:300]}") from err
        return (Path(tmp) / "model.tflite").read_bytes()


# The calibration ai-edge-quantizer's Quantizer.calibrate runs keeps a moving average (0.95) of each tensor's
# per-image min/max, so the ranges describe the last ~20 images and clip the rest: on the digits demo that cost
# 1.7-2.0 points of top-1. The true min/max over all calibration images (its own ``min_max_update``) keeps
# int8 within 0.3 points there, fully int8 (keeping the first conv and the classifier in float gained nothing).
INT8_CALIBRATION = "min_max"


def _quantize_int8(float_model: bytes, calibration: list[np.ndarray]) -> bytes:
    """Static int8 (per-channel weights, activations), ranges the min/max over all calibration images."""
    from ai_edge_litert.interpreter import Interpreter

    require("ai_edge_quantizer", "TFLite int8")
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    (name,) = Interpreter(model_content=float_model).get_signature_runner().get_input_details()
    samples = [{name: image[None]} for batch in calibration for image in batch]
    rules = recipe.static_wi8_ai8()
    with quiet(*_LOGGERS):
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(rules)
        calib = calibrator.Calibrator(float_model, qsv_update_func=qsv_utils.min_max_update)
        calib.calibrate({"serving_default": samples}, manager)
        qt = quantizer.Quantizer(float_model, rules)
        return bytes(qt.quantize(calib.get_model_qsvs()).quantized_model)


def int8_metadata(calibration: list[np.ndarray]) -> dict[str, Any]:
    """What the int8 file is: int8 everywhere (no float layers), how its activation ranges were calibrated."""
    return {
        "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor asymmetric",
        "calibration": INT8_CALIBRATION,
        "calibration_images": sum(len(batch) for batch in calibration),
        "float_layers": [],
    }


def add_metadata(model_bytes: bytes, meta: dict[str, Any]) -> bytes:
    """The .tflite bytes with ``meta`` as JSON in a ``Metadata`` entry named :data:`METADATA_NAME`."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def export_tflite(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
    calibration_data: Iterable[Tensor] | None = None,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
    verify_export: bool = True,
) -> ExportResult:
    """Write a .tflite (NHWC float input; ``precision="int8"``: static int8 calibrated on your images).

    With ``verify_export`` the file runs in the LiteRT interpreter against PyTorch before it is moved into
    place: fp32 on a seeded batch (max |diff| within :data:`~.common.FP32_TOLERANCE` of the largest logit),
    int8 on its calibration images (top-1 agreement at least :data:`~.common.INT8_MIN_AGREEMENT`); beyond
    that a :class:`~.common.VerificationError` with the numbers, and nothing written.
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"TFLite export writes precision 'fp32' or 'int8', not {precision!r}")
    path = Path(path)
    check_output_path(path, overwrite)
    size = crop_size(model, img_size)
    meta = model_metadata(model, (3, size, size), False, class_names, preprocessing, arch)
    meta["precision"] = precision
    meta["tflite"] = tflite_preprocessing(Preprocessing.from_dict(meta["preprocessing"]))
    calibration = _calibration_batches(calibration_data, spatial=(size, size)) if precision == "int8" else []
    nhwc = [np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) for batch in calibration]
    if precision == "int8":
        meta["int8"] = int8_metadata(nhwc)
    # The metadata goes in before quantization: ai-edge-quantizer keeps it, and its output (weights placed
    # after the flatbuffer) cannot be re-packed by the flatbuffers object API.
    data = add_metadata(_convert(fold_batchnorm(model), size), meta)
    if precision == "int8":
        data = _quantize_int8(data, nhwc)
    result = ExportResult(path, [path])
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if verify_export:  # before the file is moved into place: one that disagrees is never written
            result.runtime = "litert"
            # int8 is judged on the images it was calibrated on; fp32 on a seeded batch of random pixels.
            x = torch.from_numpy(np.concatenate(calibration)) if calibration else verification_batch(model, size)
            result.verification = verify(model, load_tflite(tmp), x, precision, what=str(path))
    return result
