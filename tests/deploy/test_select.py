"""compile_for_inference: the auto race, bad backends/precisions, missing runtimes and files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from deploy.helpers import IMG, reference
from shufflenet import deploy

ort = pytest.importorskip("onnxruntime")


def test_auto_times_every_candidate_and_keeps_the_fastest(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "auto", "fp32", example_input=batch[:2])
    candidates = deploy.candidate_backends("fp32")
    assert set(runner.auto_timings) == set(candidates) and len(candidates) >= 2
    assert runner.backend == min(runner.auto_timings, key=runner.auto_timings.get)
    assert (runner(batch) - reference(v2, batch)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("backend", "precision", "words"),
    [
        ("tensorrt", "fp32", "unknown backend"),
        ("torch", "fp16", "unknown precision"),
        ("torch", "int8", "int8 runs on onnxruntime"),
        ("onnxruntime", "bf16", "bf16 runs on torch"),
    ],
)
def test_bad_backend_or_precision(v2: nn.Module, backend: str, precision: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        deploy.compile_for_inference(v2, backend, precision)


def test_missing_runtime_names_the_pip_extra(v2, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(deploy.RUNTIMES["openvino"], package="shufflenet_no_such_runtime")
    monkeypatch.setitem(deploy.RUNTIMES, "openvino", missing)
    assert not deploy.backend_available("openvino")
    with pytest.raises(ImportError, match=r"pip install 'shufflenet\[openvino\]'"):
        deploy.compile_for_inference(v2, "openvino", "fp32")
    missing = dataclasses.replace(deploy.RUNTIMES["onnxruntime"], package="shufflenet_no_such_runtime")
    monkeypatch.setitem(deploy.RUNTIMES, "onnxruntime", missing)
    assert not {"onnxruntime", "openvino"} & set(deploy.available_backends())
    with pytest.raises(ValueError, match=r"shufflenet\[onnx\]"):
        deploy.compile_for_inference(v2, "auto", "int8", calibration_data=[torch.randn(1, 3, IMG, IMG)])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_onnx_file_is_named(onnx_file: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.onnx"
    data = onnx_file.read_bytes()
    path.write_bytes(
        {"garbage": b"\x08\x07not an onnx model" * 50, "truncated": data[: len(data) // 3], "empty": b""}[damage]
    )
    with pytest.raises(deploy.DeployError, match=r"broken\.onnx"):
        deploy.load_onnx(path)
    with pytest.raises(deploy.DeployError, match="export it again"):
        deploy.read_onnx_metadata(path)


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        deploy.load_onnx(tmp_path / "nope.onnx")


def test_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"nn\.Module or a path"):
        deploy.compile_for_inference(42)  # type: ignore[arg-type]


def test_every_registered_runtime_resolves_to_its_runner_class() -> None:
    assert tuple(deploy.RUNTIMES) == deploy.BACKENDS and set(deploy.SUPPORTED) == set(deploy.RUNTIMES)
    for name, runtime in deploy.RUNTIMES.items():
        cls = deploy.runner_class(name)
        assert issubclass(cls, deploy.CompiledModel) and cls.backend == name
        assert deploy.SUPPORTED[name] == runtime.precisions
        assert runtime.source in ("module", "onnx", "ncnn", "tflite")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        deploy.runner_class("tensorrt")


def test_auto_never_picks_a_reduced_precision_by_itself(v2: nn.Module, batch: torch.Tensor, onnx_file) -> None:
    """``auto`` races backends at the precision asked (fp32 by default), never bf16/int8 because the CPU has it."""
    from shufflenet.cli.evaluate import inference_function

    assert inference_function(v2, "auto", None, [batch[:2]]).precision == "fp32"  # eval/predict --backend auto
    assert deploy.load_onnx(onnx_file, "auto").precision == "fp32"
    if deploy.backend_available("openvino"):
        # OpenVINO on its own runs fp32 models in bf16 where the CPU has AMX/AVX-512 BF16; fp32 must pin f32.
        runner = deploy.load_onnx(onnx_file, "openvino")
        runner(batch[:1])
        (request,) = runner._compiled_requests("latency", (1, 3, IMG, IMG))
        assert str(request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()) == "f32"
