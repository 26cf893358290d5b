"""Post-training static int8 quantization of an exported ONNX file with ONNX Runtime's tooling.

The settings follow the CPU (:func:`choose_int8_settings`): without VNNI (AVX2 or plain AVX-512), x86 int8
convolutions multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds pairs of products in a
saturating 16-bit lane: 255 * 127 * 2 overflows it, and the logits go wrong (measured on the digits demo
under AVX2: top-1 0.81 where fp32 gives 0.98). Weights quantized to 7 bits (``reduce_range``) keep every
pair sum inside 16 bits (255 * 64 * 2 = 32640 <= 32767) at a small cost in resolution, so they are used exactly where
VNNI (32-bit accumulating ``vpdpbusd``; AVX-VNNI; AMX) is missing. NNCF (``tool="nncf"``, OpenVINO IR)
does the same with its overflow fix: ``OverflowFix.ENABLE`` (7-bit weights on every layer) without VNNI,
``DISABLE`` (full 8 bits) with it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from shufflenet.deploy.backends import _require
from shufflenet.deploy.cpu import cpu_features, describe_cpu, has_vnni
from shufflenet.deploy.export import (
    _load_onnx_proto,
    _metadata_values,
    add_onnx_metadata,
)
from shufflenet.deploy.inputs import check_batch
from shufflenet.fileio import atomic_path, check_output_path

# ONNX Runtime runs the QOperator form (QLinearConv...) fastest; OpenVINO reads only the QDQ form.
_QUANT_FORMAT = {"onnxruntime": "qoperator", "openvino": "qdq"}


@dataclass(frozen=True)
class Int8Settings:
    """How an int8 file is made: the tool, graph format and the options that depend on the CPU."""

    backend: str
    tool: str  # "onnxruntime.quantization" or "nncf"
    quant_format: str  # "qoperator" / "qdq" (ONNX), "openvino" (NNCF on an OpenVINO model)
    per_channel: bool
    reduce_range: bool  # 7-bit weights (ORT) / NNCF's overflow fix on every layer
    preset: str | None  # NNCF only: "performance" (symmetric activations) or "mixed"
    overflow_fix: str | None  # NNCF only: nncf.OverflowFix value, "enable" (7-bit weights) or "disable"
    reason: str
    cpu: dict[str, bool]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the file's metadata."""
        return asdict(self)


def choose_int8_settings(
    backend: str, features: dict[str, bool] | None = None, tool: str | None = None
) -> Int8Settings:
    """Quantization settings for ``backend`` on a CPU with ``features`` (default: this CPU, :func:`cpu_features`).

    Without VNNI the weights get 7 bits so u8 x s8 pair sums cannot saturate (module docstring); with VNNI
    the full 8 bits. Weights per channel, activations u8 per tensor. ``tool`` defaults to ONNX Runtime's
    quantizer (QOperator for onnxruntime, QDQ for openvino); ``tool="nncf"`` (openvino only) quantizes the
    OpenVINO model with NNCF: preset ``performance`` (symmetric int8 activations; ShuffleNet's are ReLU
    outputs or normalised pixels, so asymmetric ones would gain nothing) and the overflow fix where VNNI is missing.
    """
    if backend not in _QUANT_FORMAT:
        raise ValueError(f"int8 runs on backend 'onnxruntime' or 'openvino', not {backend!r}")
    features = dict(cpu_features() if features is None else features)
    vnni = has_vnni(features)
    if tool is None:
        tool = "onnxruntime.quantization"
    if tool not in ("nncf", "onnxruntime.quantization"):
        raise ValueError(f"tool must be 'nncf' or 'onnxruntime.quantization', got {tool!r}")
    if tool == "nncf" and backend != "openvino":
        raise ValueError(f"NNCF makes int8 OpenVINO models; backend must be 'openvino', not {backend!r}")
    reason = (
        f"CPU has VNNI ({describe_cpu(features)}): full-range 8-bit weights"
        if vnni
        else f"CPU lacks VNNI ({describe_cpu(features)}): 7-bit weights so 16-bit u8*s8 pair sums cannot saturate"
    )
    if tool == "nncf":
        reason += " (NNCF overflow fix " + ("disabled)" if vnni else "on every layer)")
    return Int8Settings(
        backend=backend,
        tool=tool,
        quant_format="openvino" if tool == "nncf" else _QUANT_FORMAT[backend],
        per_channel=True,
        reduce_range=not vnni,
        preset="performance" if tool == "nncf" else None,
        overflow_fix=("disable" if vnni else "enable") if tool == "nncf" else None,
        reason=reason,
        cpu=features,
    )


def _calibration_batches(
    calibration_data: Iterable[Tensor | np.ndarray] | None, channels: int = 3, spatial: tuple[int, int] | None = None
) -> list[np.ndarray]:
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
            batches.append(check_batch(batch, channels, spatial).numpy())
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
    *,
    reduce_range: bool | None = None,
) -> Path:
    """Post-training static int8 quantization of an fp32 ONNX file (u8 activations, per-channel s8 weights).

    ``reduce_range`` (7-bit weights) defaults to what :func:`choose_int8_settings` picks for this CPU.
    The settings used are stored in the file's ``shufflenet.int8`` metadata.
    """
    _require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    dst = Path(dst)
    check_output_path(dst, overwrite)
    settings = choose_int8_settings("onnxruntime" if quant_format == "qoperator" else "openvino")
    if reduce_range is not None and reduce_range != settings.reduce_range:
        reason = f"reduce_range={reduce_range} as asked (this CPU: {describe_cpu(settings.cpu)})"
        settings = replace(settings, reduce_range=reduce_range, reason=reason)
    proto = _load_onnx_proto(src)
    input_name = proto.graph.input[0].name
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    batches = _calibration_batches(calibration_data, fixed[1] or 3 if len(fixed) == 4 else 3)
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
        with atomic_path(dst) as tmp_path:
            quantize_static(
                str(prepared),
                str(tmp_path),
                Reader(),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            # The fp32 file's verification says nothing about the int8 one.
            meta = {k: v for k, v in _metadata_values(proto, src).items() if k != "verification"}
            add_onnx_metadata(tmp_path, {**meta, "int8": settings.to_dict()})
    return dst
