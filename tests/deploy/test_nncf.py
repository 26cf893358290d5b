"""NNCF int8 for OpenVINO: settings per CPU, the IR file (.xml + .bin) and its metadata, eval/predict on it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.helpers import ALDER_LAKE, AVX2, AVX512, AVX512_VNNI, RUN_CLASSES, SAPPHIRE_RAPIDS
from shufflenet import deploy
from shufflenet.cli import main
from shufflenet.data import read_split
from shufflenet.deploy.calibration import load_batches
from shufflenet.deploy.ir import nncf_quantize
from shufflenet.transforms import Preprocessing

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.mark.parametrize(
    ("features", "overflow_fix"),
    [
        (AVX2, "enable"),
        (AVX512, "enable"),
        ({}, "enable"),
        (AVX512_VNNI, "disable"),
        (ALDER_LAKE, "disable"),
        (SAPPHIRE_RAPIDS, "disable"),
    ],
)
def test_nncf_settings_follow_the_cpu(features: dict[str, bool], overflow_fix: str) -> None:
    settings = deploy.choose_int8_settings("openvino", features, tool="nncf")
    assert settings.overflow_fix == overflow_fix and settings.reduce_range is (overflow_fix == "enable")
    assert settings.tool == "nncf" and settings.quant_format == "openvino" and settings.preset == "performance"
    assert ("lacks VNNI" in settings.reason) is (overflow_fix == "enable") and settings.cpu == features
    assert deploy.choose_int8_settings("openvino", features).overflow_fix is None  # ONNX Runtime's tool


def test_nncf_is_for_openvino_only() -> None:
    with pytest.raises(ValueError, match="backend must be 'openvino'"):
        deploy.choose_int8_settings("onnxruntime", AVX2, tool="nncf")


@pytest.mark.parametrize(("features", "largest"), [(AVX2, 64), (SAPPHIRE_RAPIDS, 127)])
def test_nncf_weights_fit_7_bits_exactly_where_vnni_is_missing(onnx_file: Path, calibration, features, largest) -> None:
    """The overflow fix reaches NNCF: int8 weight constants span +-64 without VNNI, the full +-127 with it."""
    settings = deploy.choose_int8_settings("openvino", features, tool="nncf")
    model = nncf_quantize(onnx_file, [b.numpy() for b in calibration[:1]], settings)
    weights = [
        np.abs(op.get_data().astype(np.int32)).max()
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]
    assert len(weights) > 10 and max(weights) == largest


@pytest.fixture(scope="module")
def ir_file(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`shufflenet quantize --backend openvino --out q.xml` on the run folder, and what it printed."""
    out = tmp_path_factory.mktemp("ir") / "q.xml"
    argv = ["quantize", "--weights", str(run_dir / "best.pt"), "--backend", "openvino", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--calibration-size", "5", "--max-drop", "100"]) == 0
    return out, printed.getvalue()


def test_quantize_writes_an_ir_with_metadata_in_rt_info(ir_file: tuple[Path, str]) -> None:
    out, printed = ir_file
    assert out.with_suffix(".bin").is_file()
    meta = deploy.read_onnx_metadata(out)
    assert meta["class_names"] == RUN_CLASSES and meta["preprocessing"] == Preprocessing.for_size(32)
    assert meta["int8"] == {**deploy.choose_int8_settings("openvino", tool="nncf").to_dict(), "accuracy_control": False}
    assert meta["int8_calibration"]["images"] == 5 and "training split" in meta["int8_calibration"]["source"]
    accuracy = meta["int8_accuracy"]
    assert accuracy["val_images"] == 6
    assert "int8 for openvino (nncf, openvino)" in printed
    assert f"fp32 {accuracy['fp32_top1']:.4f}, int8 {accuracy['int8_top1']:.4f}" in printed
    runner = deploy.compile_for_inference(out)
    assert (runner.backend, runner.precision, runner.class_names) == ("openvino", "int8", RUN_CLASSES)
    ops = {op.get_type_name() for op in runner.model.get_ops()}
    assert "FakeQuantize" in ops  # really int8, not the fp32 graph


def test_eval_and_predict_run_the_ir_with_the_runs_classes(run_dir: Path, ir_file: tuple[Path, str], tmp_path: Path):
    out, _ = ir_file
    split = run_dir / "split.json"
    _, _, val = read_split(split, json.loads(split.read_text())["root"])
    for path, label in val:  # the validation images as class folders: eval must match the recorded accuracy
        (tmp_path / "val" / RUN_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "val" / RUN_CLASSES[label] / path.name)
    report = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(out), "--data", str(tmp_path / "val"), "--json", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert (result["backend"], result["precision"]) == ("openvino", "int8")
    assert result["top1"] == pytest.approx(deploy.read_onnx_metadata(out)["int8_accuracy"]["int8_top1"], abs=1e-6)

    paths = sorted(path for path, _ in val)
    assert main(["predict", "--weights", str(out), *map(str, paths), "--json", str(tmp_path / "p.json")]) == 0
    predicted = [p["label"] for p in json.loads((tmp_path / "p.json").read_text())["predictions"]]
    runner = deploy.compile_for_inference(out)
    images = torch.cat(load_batches([(p, 0) for p in paths], Preprocessing.for_size(32)))
    assert predicted == [RUN_CLASSES[i] for i in runner(images).argmax(1).tolist()]


def test_ir_without_its_bin_or_on_another_backend_is_refused(ir_file: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = ir_file
    with pytest.raises(ValueError, match=r"OpenVINO IR; it runs on backend 'openvino', not 'onnxruntime'"):
        deploy.compile_for_inference(out, "onnxruntime")
    shutil.copy(out, tmp_path / "alone.xml")
    with pytest.raises(FileNotFoundError, match=r"alone\.bin does not exist: an OpenVINO IR is alone\.xml plus"):
        deploy.compile_for_inference(tmp_path / "alone.xml")


def test_ir_needs_openvino_and_accuracy_control_needs_an_ir(run_dir: Path, tmp_path: Path) -> None:
    weights = run_dir / "best.pt"
    with pytest.raises(ValueError, match=r"runs on backend 'openvino', not 'onnxruntime'; or name it \*\.onnx"):
        deploy.quantize_run(weights, "onnxruntime", tmp_path / "q.xml", calibration_size=3)
    with pytest.raises(ValueError, match=r"--accuracy-control is NNCF's .* --out FILE\.xml"):
        deploy.quantize_run(weights, "openvino", tmp_path / "q.onnx", calibration_size=3, accuracy_control=True)
    with pytest.raises(ValueError, match=r"name the int8 file \*\.xml .* or \*\.onnx"):
        deploy.quantize_run(weights, "openvino", tmp_path / "q.bin", calibration_size=3)
    assert not list(tmp_path.iterdir())


def test_accuracy_control_runs_nncf_with_the_validation_images(run_dir: Path, tmp_path: Path) -> None:
    """Wiring: NNCF's accuracy-aware quantization runs on the val split with --max-drop as its limit."""
    out = tmp_path / "q.xml"
    result = deploy.quantize_run(
        run_dir / "best.pt", "openvino", out, calibration_size=5, max_drop=0, accuracy_control=True
    )
    meta = deploy.read_onnx_metadata(out)
    assert meta["int8"]["accuracy_control"] is True and "accuracy control: max drop 0 points" in meta["int8"]["reason"]
    assert result.drop <= 0 and meta["int8_accuracy"]["int8_top1"] == result.int8_top1
