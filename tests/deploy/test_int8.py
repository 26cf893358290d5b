"""`shufflenet quantize`: calibration sampled from the run's training split, the accuracy check, the file it writes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from deploy.helpers import RUN_CLASSES, RUN_COUNTS
from shufflenet import deploy
from shufflenet.checkpoints import load_model
from shufflenet.cli import main
from shufflenet.deploy import calibration as calib

pytest.importorskip("onnxruntime")

CLASSES, COUNTS = RUN_CLASSES, RUN_COUNTS


def test_calibration_is_a_seeded_stratified_sample_of_the_training_split(run_dir: Path) -> None:
    names, train, val = calib.run_split(run_dir / "best.pt")
    assert names == CLASSES and len(train) == sum(COUNTS.values()) and len(val) == 6
    sample = calib.stratified_sample(train, 7, seed=0)
    assert Counter(label for _, label in sample) == {0: 4, 1: 2, 2: 1}  # 12:6:3 scaled to 7
    assert set(sample) <= set(train) and not set(sample) & set(val)
    assert sample == calib.stratified_sample(train, 7, seed=0)
    assert sample != calib.stratified_sample(train, 7, seed=1)
    assert calib.stratified_sample(train, 100) == sorted(train, key=lambda s: (s[1], str(s[0])))


def test_no_split_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"split\.json.*--calibration DIR"):
        calib.run_split(tmp_path / "best.pt")


def test_quantize_writes_an_int8_file_with_settings_calibration_and_accuracy(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = deploy.quantize_run(run_dir / "best.pt", "onnxruntime", out, calibration_size=7, max_drop=100)
    meta = deploy.read_onnx_metadata(out)
    assert meta["int8"]["reduce_range"] is deploy.choose_int8_settings("onnxruntime").reduce_range
    assert meta["int8"]["cpu"] == deploy.cpu_features()
    assert meta["int8_calibration"]["images"] == 7 and "training split" in meta["int8_calibration"]["source"]
    assert meta["int8_accuracy"] == {"fp32_top1": result.fp32_top1, "int8_top1": result.int8_top1, "val_images": 6}
    assert meta["class_names"] == CLASSES
    runner = deploy.compile_for_inference(out)
    assert runner.precision == "int8" and runner.backend == "onnxruntime"


def test_max_drop_fails_and_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    # A negative limit demands int8 beat fp32 by 50 points: the check must fail, whatever the accuracies.
    match = r"int8 top-1 .* vs fp32 .* more than --max-drop -50.*--backend openvino --out FILE\.xml --accuracy-control"
    with pytest.raises(deploy.AccuracyDropError, match=match):
        deploy.quantize_run(run_dir / "best.pt", "onnxruntime", out, calibration_size=7, max_drop=-50)
    assert not out.exists()


def test_cli_quantize_then_eval_the_int8_file(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q.onnx"
    argv = ["quantize", "--weights", str(run_dir / "best.pt"), "--backend", "onnxruntime", "--out", str(out)]
    assert main([*argv, "--calibration-size", "5", "--max-drop", "100"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 on 6 validation images: fp32" in printed and "calibration: 5 images" in printed
    data = json.loads((run_dir / "split.json").read_text())["root"]
    report = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(out), "--data", data, "--json", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert result["precision"] == "int8" and result["backend"] == "onnxruntime"


def test_cli_bench_times_the_int8_file_beside_its_checkpoint(run_dir: Path, tmp_path: Path, capsys) -> None:
    """`bench --weights FILE.onnx` finds the fp32 checkpoint in the file's metadata and times the file beside it."""
    out = tmp_path / "q.onnx"
    deploy.quantize_run(run_dir / "best.pt", "onnxruntime", out, calibration_size=5, max_drop=100)
    assert deploy.read_onnx_metadata(out)["source_checkpoint"] == str((run_dir / "best.pt").resolve())
    report = tmp_path / "bench.json"
    argv = ["bench", "--weights", str(out), "--batch-sizes", "2", "--backends", "onnxruntime"]
    assert main([*argv, "--precisions", "fp32", "--threads", "1", "--time", "0.02", "--json", str(report)]) == 0
    accuracy = deploy.read_onnx_metadata(out)["int8_accuracy"]
    assert f"top-1 was int8 {accuracy['int8_top1']:.4f} vs fp32 {accuracy['fp32_top1']:.4f}" in capsys.readouterr().out
    result = json.loads(report.read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"torchvision eager", "onnxruntime fp32", "onnxruntime int8 (q.onnx)"}
    int8 = rows["onnxruntime int8 (q.onnx)"]
    assert int8["precision"] == "int8" and int8["img_size"] == 32  # the file's crop size, not 224
    # Compared with the checkpoint the file was made from: int8 rounding (2e-5 here) only. This model's logits
    # are ~1e-2 and another seed's differ from them by ~2e-2, so a wrong reference could not pass.
    assert 0 < int8["max_abs_diff"] < 1e-3
    assert rows["onnxruntime fp32"]["max_abs_diff"] < 1e-4


def test_cli_bench_of_a_file_without_its_checkpoint_says_what_to_do(run_dir: Path, tmp_path: Path, capsys) -> None:
    exported = deploy.export_onnx(load_model(run_dir / "best.pt"), tmp_path / "m.onnx")
    assert main(["bench", "--weights", str(exported), "--quiet"]) == 2
    assert "--reference CHECKPOINT" in capsys.readouterr().err
    argv = ["bench", "--weights", str(exported), "--reference", str(tmp_path / "gone.pt"), "--quiet"]
    assert main(argv) == 2
    assert "gone.pt" in capsys.readouterr().err
