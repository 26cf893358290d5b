"""Deployment runners: BN folding, every backend/precision against PyTorch, and every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shufflenet import create_model, deploy

ort = pytest.importorskip("onnxruntime")

IMG = 32
NUM_CLASSES = 4


def synthetic_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of four easy classes (horizontal / vertical stripes, two colour casts)."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    images = torch.randn(n, 3, IMG, IMG, generator=generator) * 0.5
    wave = torch.sin(3 * torch.linspace(0, 2 * torch.pi, IMG))
    color = torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1).expand(3, IMG, IMG)
    patterns = torch.stack(
        [wave.view(1, IMG, 1).expand(3, IMG, IMG), wave.view(1, 1, IMG).expand(3, IMG, IMG), color, -color]
    )
    return images + patterns[labels], labels


def trained(name: str) -> nn.Module:
    """A small model trained for 40 steps on the synthetic task: reduced precision is judged on a model
    whose predictions mean something (random weights make every perturbation look chaotic)."""
    generator = torch.Generator().manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        images, labels = synthetic_batch(32, generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def v2() -> nn.Module:
    return trained("shufflenet_v2_x0_5")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return synthetic_batch(64, torch.Generator().manual_seed(1))[0]


@pytest.fixture(scope="module")
def calibration() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [synthetic_batch(16, generator)[0] for _ in range(4)]


@pytest.fixture(scope="module")
def onnx_file(v2: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "v2.onnx"
    return deploy.export_onnx(v2, path, img_size=IMG, dynamic_batch=True)


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_close_logits(ref: torch.Tensor, got: torch.Tensor, rel: float, min_top1: float) -> None:
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # The check means something only if the model predicts several classes on these inputs.
    assert ref.argmax(1).unique().numel() == NUM_CLASSES
    check = deploy.agreement(ref, got)
    assert check["max_abs_diff"] <= rel * ref.abs().max().item(), check
    assert check["top1_agreement"] >= min_top1, check


# ---------------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_25"])
def test_fold_batchnorm_is_exact_and_leaves_the_model_alone(name: str) -> None:
    model = trained(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = deploy.fold_batchnorm(model)
    x = synthetic_batch(8, torch.Generator().manual_seed(3))[0]
    expected = reference(model, x)
    # float32 sums in another order: exact up to rounding, ~1e-5 relative to the logit scale.
    assert (reference(folded, x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_conv_bn_matches_formula_with_conv_bias() -> None:
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deploy.fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)


# ---------------------------------------------------------------------------------------------- torch


def test_torch_fp32_matches_eager_at_any_batch_and_size(v2: nn.Module) -> None:
    runner = deploy.compile_for_inference(v2, "torch")
    for shape in [(1, 3, IMG, IMG), (5, 3, 64, 48)]:
        x = torch.randn(shape)
        assert (runner(x) - reference(v2, x)).abs().max().item() <= 1e-4
    assert runner.backend == "torch" and runner.precision == "fp32"


def test_torch_bf16_agrees_with_fp32(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "torch", "bf16")
    assert_close_logits(reference(v2, batch), runner(batch), rel=0.05, min_top1=0.95)


# ---------------------------------------------------------------------------------------------- onnx runtimes


def test_compile_onnxruntime_fp32_matches_pytorch(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "onnxruntime", example_input=batch[:1])
    assert isinstance(runner, deploy.OnnxRuntimeModel)
    assert isinstance(runner.session, ort.InferenceSession)
    ref, got = reference(v2, batch), runner(batch)
    assert (got - ref).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert runner(batch[:1]).shape == (1, NUM_CLASSES)


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
    monkeypatch.setattr(deploy, "MICRO_BATCH_PIXELS", 5 * IMG * IMG)
    assert (two_streams(batch[:12]) - ref[:12]).abs().max().item() <= 1e-4
    assert {("throughput", (5, 3, IMG, IMG)), ("throughput", (2, 3, IMG, IMG))} <= set(two_streams._requests)
    if deploy.cpu_has_bf16():
        assert_close_logits(ref, deploy.load_onnx(onnx_file, "openvino", "bf16")(batch), rel=0.05, min_top1=0.95)
    int8 = deploy.load_onnx(onnx_file, "openvino", "int8", calibration_data=calibration)
    assert_close_logits(ref, int8(batch), rel=0.2, min_top1=0.9)


def test_auto_times_every_candidate_and_keeps_the_fastest(v2: nn.Module, batch: torch.Tensor) -> None:
    runner = deploy.compile_for_inference(v2, "auto", "fp32", example_input=batch[:2])
    candidates = deploy.candidate_backends("fp32")
    assert set(runner.auto_timings) == set(candidates) and len(candidates) >= 2
    assert runner.backend == min(runner.auto_timings, key=runner.auto_timings.get)
    assert (runner(batch) - reference(v2, batch)).abs().max().item() <= 1e-4


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


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def ort_runner(onnx_file: Path) -> deploy.CompiledModel:
    return deploy.load_onnx(onnx_file, "onnxruntime")


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
    monkeypatch.setitem(deploy._RUNTIMES, "openvino", ("shufflenet_no_such_runtime", "openvino"))
    assert not deploy.backend_available("openvino")
    with pytest.raises(ImportError, match=r"pip install 'shufflenet\[openvino\]'"):
        deploy.compile_for_inference(v2, "openvino", "fp32")
    monkeypatch.setitem(deploy._RUNTIMES, "onnxruntime", ("shufflenet_no_such_runtime", "onnx"))
    assert deploy.available_backends() == ["torch"]
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
