"""ShuffleNetV2+ downstream: ONNX (onnxruntime, OpenVINO), int8, ncnn and LiteRT exports run in their runtimes.

h-swish, hard-sigmoid and the squeeze-excitation (a global mean and a broadcast multiply) are the operations
v1/v2 never exported; each runtime must run them and agree with PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from deploy.helpers import IMG, NUM_CLASSES, assert_close_logits, reference, synthetic_batch, trained
from shufflenet import deploy
from shufflenet.cli import main
from shufflenet.deploy.folding import fold_batchnorm
from shufflenet.deploy.formats.common import module_available
from shufflenet.transforms import Preprocessing

ARCH = "shufflenet_v2_plus_small"
CLASSES = [str(i) for i in range(NUM_CLASSES)]
PREP = Preprocessing.for_size(IMG)


@pytest.fixture(scope="module")
def plus() -> nn.Module:
    """V2+ Small trained on the synthetic task, its BN statistics then recomputed on training batches.

    40 steps move the weights faster than BN's running averages follow (eval accuracy stays near chance);
    megvii's own training ends with such a BN pass (train.py's bn_process).
    """
    model = trained(ARCH)
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(synthetic_batch(32, generator)[0])
    model.eval()
    model.preprocessing = PREP
    return model


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return synthetic_batch(64, torch.Generator().manual_seed(1))[0]


@pytest.fixture(scope="module")
def plus_onnx(plus: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deploy.export_onnx(plus, tmp_path_factory.mktemp("plus") / "plus.onnx", img_size=IMG, dynamic_batch=True)


def test_the_model_learned_the_task(plus: nn.Module) -> None:
    images, labels = synthetic_batch(64, torch.Generator().manual_seed(1))
    assert (reference(plus, images).argmax(1) == labels).float().mean() >= 0.9


def test_onnx_graph_has_hswish_hsigmoid_and_no_batchnorm(plus_onnx: Path) -> None:
    ops = [node.op_type for node in onnx.load(str(plus_onnx)).graph.node]
    # stem 1; stage 1 ReLU only; stride-2 units 3 (main 2, projection 1), stride-1 units 2, the Xception unit 3:
    # stage 2 3+3*2, stage 3 3+7*2, stage 4 3+2+3+2; conv5 1, the head's linear 1
    assert ops.count("HardSwish") == 1 + (3 + 3 * 2) + (3 + 7 * 2) + (3 + 2 + 3 + 2) + 1 + 1
    assert ops.count("HardSigmoid") == 8 + 4 + 1  # the SE of every stage-3/4 unit, and the head's
    assert "BatchNormalization" not in ops


def test_every_batchnorm_folds_the_se_ones_too(plus: nn.Module, batch: torch.Tensor) -> None:
    """The SE's conv, BN and ReLU sit in one Sequential, so deploy.folding folds that BN like the others."""
    folded = fold_batchnorm(plus)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    torch.testing.assert_close(reference(folded, batch), reference(plus, batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_runtimes_agree_with_pytorch(plus: nn.Module, plus_onnx: Path, batch: torch.Tensor, backend: str) -> None:
    if not module_available(backend):
        pytest.skip(f"{backend} is not installed")
    ref = reference(plus, batch)
    got = deploy.load_onnx(plus_onnx, backend)(batch)
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_onnxruntime_int8_within_the_usual_gate(plus: nn.Module, plus_onnx: Path, batch: torch.Tensor) -> None:
    pytest.importorskip("onnxruntime")
    generator = torch.Generator().manual_seed(2)
    calibration = [synthetic_batch(16, generator)[0] for _ in range(4)]
    runner = deploy.load_onnx(plus_onnx, "onnxruntime", "int8", calibration_data=calibration)
    assert runner.precision == "int8"
    assert_close_logits(reference(plus, batch), runner(batch), rel=0.2, min_top1=0.9)


@pytest.mark.skipif(
    not (module_available("ncnn") and module_available("pnnx")), reason="pip install 'shufflenet[ncnn]'"
)
def test_ncnn_export_runs_hswish_and_se_in_ncnn(plus: nn.Module, batch: torch.Tensor, tmp_path: Path) -> None:
    from shufflenet.deploy.formats.ncnn import export_ncnn
    from shufflenet.deploy.runtimes.ncnn import load_ncnn

    result = export_ncnn(plus, tmp_path / "ncnn", img_size=IMG, class_names=CLASSES, preprocessing=PREP, arch=ARCH)
    assert result.verification["max_abs_diff"] <= 1e-4 and result.verification["top1_agreement"] == 1.0
    layers = [line.split()[0] for line in (result.path / "model.ncnn.param").read_text().splitlines()[2:]]
    assert layers.count("HardSwish") > 0 and layers.count("HardSigmoid") == 13 and "BatchNorm" not in layers
    ref = reference(plus, batch[:5])
    got = load_ncnn(result.path, threads=1)(batch[:5])
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.slow
@pytest.mark.skipif(
    not (module_available("litert_torch") and module_available("ai_edge_litert")),
    reason="pip install 'shufflenet[litert]'",
)
def test_tflite_export_runs_in_litert(plus: nn.Module, batch: torch.Tensor, tmp_path: Path) -> None:
    from shufflenet.deploy.formats.litert import export_tflite
    from shufflenet.deploy.runtimes.litert import load_tflite

    result = export_tflite(
        plus, tmp_path / "plus.tflite", img_size=IMG, class_names=CLASSES, preprocessing=PREP, arch=ARCH
    )
    assert result.verification["max_abs_diff"] <= 1e-4 and result.verification["top1_agreement"] == 1.0
    ref = reference(plus, batch[:4])
    got = load_tflite(result.path, threads=1)(batch[:4])
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_cli_bench_rows_for_v2_plus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", ARCH, "--img-size", "32", "--batch-sizes", "1,2", "--backends", "torch,onnxruntime"]
    assert main([*args, "--precisions", "fp32", "--threads", "1", "--time", "0.02", "--json", str(out), "--quiet"]) == 0
    assert ARCH in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [row["label"] for row in rows] == ["shufflenet eager", "torch fp32", "onnxruntime fp32"] * 2
    assert all(row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0 for row in rows)
    assert all(row["img_per_s"] > 0 for row in rows)


def test_torchscript_export_matches_at_any_batch(plus: nn.Module, batch: torch.Tensor, tmp_path: Path) -> None:
    path = deploy.export_torchscript(plus, tmp_path / "plus.pt", img_size=IMG)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch[:5]), reference(plus, batch[:5]), rtol=1e-4, atol=1e-4)
