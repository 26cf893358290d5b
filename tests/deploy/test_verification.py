"""Export verification can fail: a file that disagrees with PyTorch is not written and the command says why.

Each exporter is given a deliberately altered graph (one conv layer's weights 1% larger, or the classes
swapped) while PyTorch keeps the checkpoint's: the check must refuse it, leave nothing at --out, and print
the numbers. The model is the one trained on the digits (conftest.py), so agreement means something.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from shufflenet.checkpoints import load_model
from shufflenet.cli import main
from shufflenet.deploy import export as export_module
from shufflenet.deploy.calibration import load_images, run_split, stratified_sample
from shufflenet.deploy.formats.common import FP32_TOLERANCE, VerificationError, module_available

needs_ncnn = pytest.mark.skipif(not (module_available("ncnn") and module_available("pnnx")), reason="no ncnn/pnnx")
needs_litert = pytest.mark.skipif(
    not (module_available("litert_torch") and module_available("ai_edge_litert")), reason="no litert"
)
needs_coreml = pytest.mark.skipif(not module_available("coremltools"), reason="no coremltools")


def conv_one_percent_larger(module: nn.Module) -> nn.Module:
    """The first conv's weights times 1.01: logits move ~1e-2 of their scale, ten times the fp32 tolerance."""
    conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight.mul_(1.01)
    return module


def classes_swapped(module: nn.Module) -> nn.Module:
    """The classifier's rows rolled by one: every prediction names the wrong class."""
    with torch.no_grad():
        module.fc.weight.copy_(module.fc.weight.roll(1, 0))
        module.fc.bias.copy_(module.fc.bias.roll(1, 0))
    return module


def altering(real: Callable[..., nn.Module], alter: Callable[[nn.Module], nn.Module]) -> Callable[..., nn.Module]:
    """``real`` (an exporter's fold/prepare step) followed by ``alter`` on its copy of the model."""
    return lambda model, *args, **kwargs: alter(real(model, *args, **kwargs))


@pytest.fixture(scope="module")
def digits_model(digits_run: Path) -> nn.Module:
    return load_model(digits_run / "best.pt", device="cpu").eval()


def export_args(weights: Path, fmt: str, out: Path) -> list[str]:
    return ["export", "--weights", str(weights), "--format", fmt, "--out", str(out)]


# ---------------------------------------------------------------------------------------------- ONNX, TorchScript


def test_cli_onnx_that_disagrees_is_not_written(digits_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(export_args(digits_run / "best.pt", "onnx", out)) == 0  # the faithful export passes
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in printed and "top-1 agreement 100% on 4 images" in printed
    out.unlink()

    altered = altering(export_module.prepare_for_inference, conv_one_percent_larger)
    monkeypatch.setattr(export_module, "prepare_for_inference", altered)
    assert main(export_args(digits_run / "best.pt", "onnx", out)) == 2
    err = capsys.readouterr().err
    assert f"{out} disagrees with PyTorch: max abs diff" in err and "of the largest logit" in err
    assert f"fp32 allows {FP32_TOLERANCE:g}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert main([*export_args(digits_run / "best.pt", "onnx", out), "--no-verify"]) == 0  # the check refused it
    assert out.is_file()


def test_cli_torchscript_that_disagrees_is_not_written(digits_run: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "m.pt"
    monkeypatch.setattr(
        export_module, "fold_batchnorm", altering(export_module.fold_batchnorm, conv_one_percent_larger)
    )
    assert main(export_args(digits_run / "best.pt", "torchscript", out)) == 2
    err = capsys.readouterr().err
    assert f"{out} disagrees with PyTorch: max abs diff" in err and "top-1 agreement" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- ncnn, TFLite


@needs_ncnn
def test_ncnn_that_disagrees_is_not_written(digits_model: nn.Module, tmp_path: Path, monkeypatch) -> None:
    from shufflenet.deploy.formats import ncnn

    monkeypatch.setattr(ncnn, "fold_batchnorm", altering(ncnn.fold_batchnorm, conv_one_percent_larger))
    with pytest.raises(VerificationError, match=r"disagrees with PyTorch: max abs diff .* of the largest logit"):
        ncnn.export_ncnn(digits_model, tmp_path / "ncnn")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging folder


@needs_litert
def test_tflite_fp32_that_disagrees_is_not_written(digits_model: nn.Module, tmp_path: Path, monkeypatch) -> None:
    from shufflenet.deploy.formats import litert

    monkeypatch.setattr(litert, "fold_batchnorm", altering(litert.fold_batchnorm, conv_one_percent_larger))
    with pytest.raises(VerificationError, match=r"disagrees with PyTorch: max abs diff .*\(fp32 allows 0.001 "):
        litert.export_tflite(digits_model, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digits_calibration(digits_run: Path, digits_model: nn.Module) -> list[torch.Tensor]:
    """100 training images of the digits run, a stratified sample, as the export CLI takes them."""
    return load_images(stratified_sample(run_split(digits_run / "best.pt")[1], 100), digits_model.preprocessing).batches


@needs_litert
def test_tflite_int8_agrees_with_pytorch_on_its_calibration_images(
    digits_model: nn.Module, digits_calibration: list[torch.Tensor], tmp_path: Path
) -> None:
    from shufflenet.deploy.formats.litert import export_tflite
    from shufflenet.deploy.runtimes.litert import load_tflite

    result = export_tflite(digits_model, tmp_path / "m.tflite", precision="int8", calibration_data=digits_calibration)
    images = torch.cat(digits_calibration)
    with torch.inference_mode():
        expected = digits_model(images).argmax(1)
    agreement = (load_tflite(result.path)(images).argmax(1) == expected).float().mean().item()
    assert agreement >= 0.95  # measured 0.98 here (2 of 100 images flip); the export's own floor is 0.9
    assert result.verification["top1_agreement"] == pytest.approx(agreement) and result.verification["images"] == 100


@needs_litert
def test_tflite_int8_that_disagrees_is_not_written(
    digits_model: nn.Module, digits_calibration: list[torch.Tensor], tmp_path: Path, monkeypatch
) -> None:
    from shufflenet.deploy.formats import litert

    monkeypatch.setattr(litert, "fold_batchnorm", altering(litert.fold_batchnorm, classes_swapped))
    out = tmp_path / "m.tflite"
    with pytest.raises(VerificationError, match=r"top-1 agreement [0-9.]+% on 100 images \(int8 needs 90%"):
        litert.export_tflite(digits_model, out, precision="int8", calibration_data=digits_calibration)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- Core ML


@needs_coreml
def test_coreml_package_layers_and_weights_match_the_model(digits_model: nn.Module, tmp_path: Path, monkeypatch):
    """Core ML cannot run here: its conv/linear layers and their weights are read back and compared instead."""
    from shufflenet.deploy.formats import coreml

    result = coreml.export_coreml(digits_model, tmp_path / "m.mlpackage")
    convs = sum(isinstance(m, nn.Conv2d) for m in digits_model.modules())
    assert f"spec checked: {convs} conv and 1 linear layers" in result.note
    assert coreml.check_coreml_layers(digits_model, result.path) == {"conv": convs, "linear": 1}
    other = copy.deepcopy(digits_model)
    conv_one_percent_larger(other)
    with pytest.raises(VerificationError, match=r"conv layer 0 differs from the model's"):
        coreml.check_coreml_layers(other, result.path)

    class Altered(coreml._NormalizeAndSoftmax):
        def __init__(self, model: nn.Module, preprocessing) -> None:
            super().__init__(conv_one_percent_larger(model), preprocessing)

    monkeypatch.setattr(coreml, "_NormalizeAndSoftmax", Altered)
    out = tmp_path / "altered.mlpackage"
    with pytest.raises(VerificationError, match=r"conv layer 0 differs"):
        coreml.export_coreml(digits_model, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
