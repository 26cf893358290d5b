"""Int8: accuracy against fp32, the graphs written, and refused calibration data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deploy.helpers import assert_close_logits, reference
from shufflenet import deploy

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
