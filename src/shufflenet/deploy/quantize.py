"""Post-training static int8 quantization of an exported ONNX file with ONNX Runtime's tooling."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from shufflenet.deploy.backends import _require
from shufflenet.deploy.export import _atomic_path, _check_output_path, _load_onnx_proto
from shufflenet.deploy.inputs import check_batch

# ONNX Runtime runs the QOperator form (QLinearConv...) fastest; OpenVINO reads only the QDQ form.
_QUANT_FORMAT = {"onnxruntime": "qoperator", "openvino": "qdq"}


def _calibration_batches(calibration_data: Iterable[Tensor | np.ndarray] | None) -> list[np.ndarray]:
    """Materialise calibration batches as float32 NCHW arrays, with clear errors for bad data."""
    if calibration_data is None:
        raise ValueError(
            "precision='int8' needs calibration_data: an iterable of float NCHW batches of your own images "
            "(a few hundred images, preprocessed exactly as for inference)"
        )
    if isinstance(calibration_data, Tensor):
        calibration_data = [calibration_data]
    batches = []
    for i, batch in enumerate(calibration_data):
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            batch = batch[0]  # (images, labels) from a DataLoader
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        try:
            batches.append(check_batch(batch, 3).numpy())
        except (TypeError, ValueError) as err:
            raise type(err)(f"calibration_data batch {i}: {err}") from None
    if not batches:
        raise ValueError("calibration_data is empty; give at least one batch of images for int8 calibration")
    return batches


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    calibration_data: Iterable[Tensor | np.ndarray],
    quant_format: str = "qdq",
    overwrite: bool = True,
) -> Path:
    """Post-training static int8 quantization of an fp32 ONNX file (u8 activations, per-channel s8 weights)."""
    _require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    dst = Path(dst)
    _check_output_path(dst, overwrite)
    batches = _calibration_batches(calibration_data)
    proto = _load_onnx_proto(src)
    input_name = proto.graph.input[0].name
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for i, batch in enumerate(batches):
        for axis, want in enumerate(fixed):
            if want and batch.shape[axis] != want:
                raise ValueError(
                    f"calibration batch {i} has shape {tuple(batch.shape)} but {src} takes "
                    f"{tuple(d or 'N' for d in fixed)}; calibrate with images of the model's input size"
                )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        with _atomic_path(dst) as tmp_path:
            quantize_static(
                str(prepared),
                str(tmp_path),
                Reader(),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    return dst
