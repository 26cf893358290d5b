"""Every runtime against PyTorch, chunking, metadata, and every bad batch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.helpers import IMG, NUM_CLASSES, assert_close_logits, reference
from shufflenet import deploy
from shufflenet.deploy.runtimes import base

ort = pytest.importorskip("onnxruntime")


def test_torch_fp32_matches_eager_at_any_batch_and_size(v2: nn.Module) -> None:
    runner = deploy.compile_for_inference(v2, "torch")
    for shape in [(1, 3, IMG, IMG), (5, 3, 64, 48)]:
        x = torch.randn(shape)
        assert (runner(x) - reference(v2, x)).abs().max().item() <= 1e-4
    assert runner.backend == "torch" and runner.precision == "fp32"


def test_torch_bf16_agrees_with_fp32(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "torch", "bf16")
    assert_close_logits(reference(v2, batch), runner(batch), rel=0.05, min_top1=0.95)


def test_compile_onnxruntime_fp32_matches_pytorch(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "onnxruntime", example_input=batch[:1])
    assert isinstance(runner, deploy.OnnxRuntimeModel)
    assert isinstance(runner.session, ort.InferenceSession)
    ref, got = reference(v2, batch), runner(batch)
    assert (got - ref).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert runner(batch[:1]).shape == (1, NUM_CLASSES)


def test_openvino_every_precision_agrees(v2, onnx_file, batch, calibration, monkeypatch) -> None:
    pytest.importorskip("openvino")
    ref = reference(v2, batch)
    fp32 = deploy.load_onnx(onnx_file, "openvino", "fp32")
    got = fp32(batch)
    assert (got - ref).abs().max().item() <= 1e-4 and torch.equal(got.argmax(1), ref.argmax(1))
    assert fp32(batch[:3]).shape == (3, NUM_CLASSES)  # a second static shape, compiled on demand
    two_streams = deploy.load_onnx(onnx_file, "openvino", "fp32", threads=2)
    assert two_streams.streams == 2
    for n in (3, 4, 63):  # latency mode; two streams of 2; streams of 32 and 31 images
        assert (two_streams(batch[:n]) - ref[:n]).abs().max().item() <= 1e-4
    assert ("throughput", (32, 3, IMG, IMG)) in two_streams._requests
    # Large fp32 batches go out as requests of at most default_max_batch images, round-robin over streams.
    monkeypatch.setattr(base, "MICRO_BATCH_PIXELS", 5 * IMG * IMG)
    assert (two_streams(batch[:12]) - ref[:12]).abs().max().item() <= 1e-4
    assert {("throughput", (5, 3, IMG, IMG)), ("throughput", (2, 3, IMG, IMG))} <= set(two_streams._requests)
    if deploy.cpu_has_bf16():
        assert_close_logits(ref, deploy.load_onnx(onnx_file, "openvino", "bf16")(batch), rel=0.05, min_top1=0.95)
    int8 = deploy.load_onnx(onnx_file, "openvino", "int8", calibration_data=calibration)
    assert_close_logits(ref, int8(batch), rel=0.2, min_top1=0.9)


def test_large_batches_run_in_chunks_with_identical_results(onnx_file: Path, batch: torch.Tensor, monkeypatch) -> None:
    runner = deploy.load_onnx(onnx_file)
    whole = runner(batch[:12])
    sizes: list[int] = []
    run = runner._run
    monkeypatch.setattr(runner, "_run", lambda x: sizes.append(x.shape[0]) or run(x))
    runner.set_max_batch(5)
    assert torch.allclose(runner(batch[:12]), whole, atol=1e-5)
    assert sizes == [5, 5, 2]
    assert deploy.default_max_batch(224, 224) == 8 and deploy.default_max_batch(448, 448) == 2
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        runner.set_max_batch(0)


def test_load_onnx_carries_metadata(v2: nn.Module, onnx_file: Path) -> None:
    runner = deploy.compile_for_inference(onnx_file, "onnxruntime")
    assert runner.class_names == [str(i) for i in range(NUM_CLASSES)]
    assert runner.preprocessing.crop_size == IMG


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (torch.randn(3, IMG, IMG), ValueError, "unsqueeze"),
        (torch.randn(2, 1, IMG, IMG), ValueError, "(N, 3, H, W)"),
        (torch.randint(0, 255, (2, 3, IMG, IMG), dtype=torch.uint8), TypeError, "floating-point"),
        (np.zeros((2, 3, IMG, IMG), np.float32), TypeError, "torch.from_numpy"),
        ([1.0, 2.0], TypeError, "list"),
        (torch.randn(0, 3, IMG, IMG), ValueError, "empty batch"),
        (torch.randn(2, 3, 48, 48), ValueError, "32x32"),
    ],
)
def test_bad_batches_raise_clear_errors(ort_runner, bad, error, words) -> None:
    with pytest.raises(error, match=re.escape(words)):
        ort_runner(bad)


def test_float64_and_float16_inputs_are_accepted(ort_runner, batch) -> None:
    expected = ort_runner(batch[:2])
    assert torch.allclose(ort_runner(batch[:2].double()), expected, atol=1e-5)
    assert ort_runner(batch[:2].half()).dtype == torch.float32


def test_static_batch_file_rejects_other_batch_sizes(v2: nn.Module, tmp_path: Path) -> None:
    path = deploy.export_onnx(v2, tmp_path / "static.onnx", img_size=32)
    runner = deploy.load_onnx(path)
    assert runner(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"exactly 1.*dynamic"):
        runner(torch.randn(2, 3, 32, 32))
