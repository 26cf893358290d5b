"""Int8: accuracy against fp32, the graphs written, and refused calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.helpers import ALDER_LAKE, AVX2, AVX512, AVX512_VNNI, SAPPHIRE_RAPIDS, assert_close_logits, reference
from shufflenet import deploy
from shufflenet.deploy.cpu import cpu_features
from shufflenet.deploy.quantize import choose_int8_settings

ort = pytest.importorskip("onnxruntime")


def test_onnxruntime_int8_agrees_with_fp32(v2, onnx_file, batch, calibration) -> None:
    runner = deploy.load_onnx(onnx_file, "onnxruntime", "int8", calibration_data=calibration)
    assert runner.precision == "int8"
    assert_close_logits(reference(v2, batch), runner(batch), rel=0.2, min_top1=0.9)


def test_quantize_onnx_writes_int8_graphs(onnx_file: Path, calibration, tmp_path: Path) -> None:
    import onnx

    qop = deploy.quantize_onnx(onnx_file, tmp_path / "qop.onnx", calibration, "qoperator")
    qdq = deploy.quantize_onnx(onnx_file, tmp_path / "qdq.onnx", calibration, "qdq")
    qop_ops = {n.op_type for n in onnx.load(str(qop)).graph.node}
    qdq_ops = [n.op_type for n in onnx.load(str(qdq)).graph.node]
    assert "QLinearConv" in qop_ops and "Conv" not in qop_ops
    assert qdq_ops.count("QuantizeLinear") >= 20 and "Conv" in qdq_ops
    int8 = [
        init
        for init in onnx.load(str(qop)).graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4
    ]
    assert len(int8) >= 20  # the conv weights are stored as int8


def test_int8_without_calibration_data_is_refused(v2: nn.Module, onnx_file: Path) -> None:
    with pytest.raises(ValueError, match="needs calibration_data"):
        deploy.compile_for_inference(v2, "onnxruntime", "int8")
    with pytest.raises(ValueError, match="needs calibration_data"):
        deploy.load_onnx(onnx_file, "onnxruntime", "int8")
    with pytest.raises(ValueError, match="empty"):
        deploy.compile_for_inference(v2, "onnxruntime", "int8", calibration_data=[])
    with pytest.raises(TypeError, match="calibration_data batch 1"):
        deploy.compile_for_inference(v2, "onnxruntime", "int8", calibration_data=[torch.randn(2, 3, 8, 8), "x"])


def test_calibration_of_the_wrong_size_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibrate with images of the model's input size"):
        deploy.quantize_onnx(onnx_file, tmp_path / "q.onnx", [torch.randn(2, 3, 48, 48)])


# ---------------------------------------------------------------------------------------------- CPU-adapted settings


@pytest.mark.parametrize(
    ("features", "reduce_range"),
    [(AVX2, True), (AVX512, True), ({}, True), (AVX512_VNNI, False), (ALDER_LAKE, False), (SAPPHIRE_RAPIDS, False)],
)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_settings_follow_the_cpu(features, reduce_range, backend) -> None:
    settings = choose_int8_settings(backend, features)
    assert settings.reduce_range is reduce_range and settings.per_channel
    assert settings.cpu == features and ("lacks VNNI" in settings.reason) is reduce_range
    assert settings.quant_format == ("qoperator" if backend == "onnxruntime" else "qdq")


def test_quantized_file_records_settings_and_cpu(onnx_file: Path, calibration, tmp_path: Path) -> None:
    path = deploy.quantize_onnx(onnx_file, tmp_path / "q.onnx", calibration, "qoperator")
    meta = deploy.read_onnx_metadata(path)
    expected = choose_int8_settings("onnxruntime")
    assert meta["int8"]["reduce_range"] is expected.reduce_range and meta["int8"]["cpu"] == cpu_features()
    assert meta["class_names"] == [str(i) for i in range(4)]  # the fp32 file's metadata is kept
    # An int8 file runs as it is: no calibration data needed, precision read from the file.
    runner = deploy.load_onnx(path, "onnxruntime")
    assert runner.precision == "int8" and runner.class_names == meta["class_names"]


def _saturating_model() -> nn.Module:
    """One 1x1 conv whose u8 activations sit near 255 and whose weights near +-127: pair sums need 17 bits."""
    conv = nn.Conv2d(16, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.ones(4, 16, 1, 1))
        conv.weight[:, ::3] = -0.05  # a small negative weight sets the scale's other end
    model = nn.Sequential(nn.ReLU(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.fc = nn.Linear(4, 4)  # export's metadata counts the classes from .fc
    model.in_chans = 16
    return model.eval()


def _emulated_vpmaddubsw(x_q: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    """u8 x s8 dot products as AVX2 without VNNI computes them: adjacent pairs summed in saturating int16."""
    pairs = x_q.astype(np.int32).reshape(-1, 1, 8, 2) * w_q.astype(np.int32).reshape(1, -1, 8, 2)
    return np.clip(pairs.sum(-1), -32768, 32767).sum(-1)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_reduce_range_weights_cannot_saturate_the_avx2_kernel(tmp_path: Path, reduce_range: bool) -> None:
    import onnx
    from onnx import numpy_helper

    model = _saturating_model()
    fp32 = deploy.export_onnx(model, tmp_path / "m.onnx", img_size=32, dynamic_batch=True)
    calibration = [torch.rand(4, 16, 32, 32) * 10]
    q = deploy.quantize_onnx(fp32, tmp_path / "q.onnx", calibration, "qoperator", reduce_range=reduce_range)
    weights = [
        numpy_helper.to_array(i) for i in onnx.load(str(q)).graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    (w_q,) = [w for w in weights if w.ndim == 4]
    assert np.abs(w_q).max() == (64 if reduce_range else 127)  # 255 * 64 * 2 = 32640 fits in int16
    x_q = np.full((1, 16), 255, dtype=np.uint8)  # the calibration maximum
    exact = x_q.astype(np.int32) @ w_q.reshape(4, 16).T.astype(np.int32)
    saturated = not np.array_equal(_emulated_vpmaddubsw(x_q, w_q.reshape(4, 16)), exact)
    assert saturated is not reduce_range
