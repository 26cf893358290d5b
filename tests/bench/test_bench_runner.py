"""The benchmark library and `shufflenet bench`: structure, agreement columns, memory, JSON, PNG (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shufflenet import bench, create_model
from shufflenet.checkpoints import make_checkpoint, save_checkpoint
from shufflenet.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_benchmark_v2_rows_against_torchvision(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = create_model("shufflenet_v2_x0_5", num_classes=10).eval()
    messages: list[str] = []
    result = bench.benchmark(
        model,
        batch_sizes=[1, 2],
        img_size=32,
        threads=1,
        backends=["torch", "onnxruntime"],
        precisions=["fp32"],
        min_time_s=0.02,
        rounds=2,
        max_others=None,
        progress=messages.append,
    )
    labels = ["torchvision eager", "torch fp32", "onnxruntime fp32"]
    assert [r.label for r in result.rows] == labels * 2
    assert [r.batch_size for r in result.rows] == [1, 1, 1, 2, 2, 2]
    for row in result.rows:
        assert row.max_abs_diff <= 1e-4 and row.top1_agreement == 1.0
        assert row.runs >= 5 and row.p10_ms <= row.median_ms <= row.p90_ms
        assert row.img_per_s == pytest.approx(row.batch_size * 1e3 / row.median_ms)
        assert row.peak_mem_mib is not None and row.peak_mem_mib > 0
    baseline = [r for r in result.rows if r.label == "torchvision eager"]
    assert all(r.speedup_vs_baseline == 1.0 for r in baseline)
    assert any("building onnxruntime fp32" in m for m in messages)
    assert result.settings["baseline"] == "torchvision eager"

    data = json.loads(json.dumps(result.to_dict()))
    assert data["machine"]["threads"] == 1 and len(data["rows"]) == 6
    png = bench.plot(result, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_benchmark_restores_thread_count() -> None:
    before = torch.get_num_threads()
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=5)
    result = bench.benchmark(
        model, batch_sizes=[1], img_size=32, threads=2, backends=["torch"], precisions=["fp32"], min_time_s=0.01
    )
    assert torch.get_num_threads() == before
    assert [r.label for r in result.rows] == ["shufflenet eager", "torch fp32"]
    assert result.machine["threads"] == 2


@pytest.mark.parametrize(("batch_sizes", "img_size", "words"), [([0], 32, "batch sizes"), ([1], 16, "img_size")])
def test_benchmark_bad_arguments(batch_sizes, img_size, words) -> None:
    with pytest.raises(ValueError, match=words):
        bench.benchmark(create_model("shufflenet_v2_x0_5"), batch_sizes=batch_sizes, img_size=img_size)


def test_cli_bench_v1_table_json_and_plot(tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "--model", "shufflenet_v1_g3_x0_25", "--img-size", "32", "--batch-sizes", "1,2"]
    args += ["--backends", "torch", "--precisions", "fp32", "--threads", "1", "--time", "0.02"]
    args += ["--json", str(out_json), "--plot", str(out_png), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "shufflenet eager" in printed and "torch fp32" in printed and "img/s" in printed
    data = json.loads(out_json.read_text())
    assert {r["label"] for r in data["rows"]} == {"shufflenet eager", "torch fp32"}
    assert data["settings"]["img_size"] == 32 and data["machine"]["cpu"]
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_cli_bench_json_to_stdout_still_writes_the_plot(tmp_path: Path, capsys) -> None:
    out_png = tmp_path / "b.png"
    args = ["bench", "--model", "shufflenet_v1_g3_x0_25", "--img-size", "32", "--batch-sizes", "1"]
    args += ["--backends", "torch", "--precisions", "fp32", "--threads", "1", "--time", "0.02"]
    assert main([*args, "--json", "-", "--plot", str(out_png), "--quiet"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # nothing but the JSON on stdout
    assert {r["label"] for r in data["rows"]} == {"shufflenet eager", "torch fp32"}
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert captured.err == f"wrote {out_png}\n"


def test_cli_bench_with_checkpoint(tmp_path: Path, capsys) -> None:
    model = create_model("shufflenet_v2_x0_5", num_classes=3)
    ckpt = save_checkpoint(tmp_path / "best.pt", make_checkpoint(model, "shufflenet_v2_x0_5", ["a", "b", "c"]))
    args = ["bench", "--weights", str(ckpt), "--img-size", "32", "--batch-sizes", "1", "--backends", "torch"]
    assert main([*args, "--precisions", "fp32", "--threads", "1", "--time", "0.02", "--quiet"]) == 0
    assert "torchvision eager" in capsys.readouterr().out
    assert main([*args, "--model", "shufflenet_v1_g3_x0_25", "--quiet"]) == 2
    assert "holds a shufflenet_v2_x0_5" in capsys.readouterr().err


def test_cli_bench_model_that_disagrees_with_an_exported_file_is_an_error_naming_both(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    from shufflenet import deploy
    from shufflenet.checkpoints import load_model

    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", num_classes=3)
    ckpt = save_checkpoint(tmp_path / "best.pt", make_checkpoint(model, "shufflenet_v2_x0_5", ["a", "b", "c"]))
    exported = deploy.export_onnx(load_model(ckpt), tmp_path / "m.onnx", img_size=32)
    args = ["bench", "--weights", str(exported), "--batch-sizes", "1", "--backends", "onnxruntime", "--quiet"]
    args += ["--precisions", "fp32", "--threads", "1", "--time", "0.02"]
    expected = f"--model shufflenet_v1_g3_x0_25 but {exported} holds a shufflenet_v2_x0_5; drop --model or fix it"
    for reference in ([], ["--reference", str(ckpt)]):  # named before the missing --reference is
        assert main([*args, *reference, "--model", "shufflenet_v1_g3_x0_25"]) == 2
        assert expected in capsys.readouterr().err
    assert main([*args, "--reference", str(ckpt), "--model", "shufflenet_v2_x0_5"]) == 0  # agreeing is fine
    assert "onnxruntime fp32 (m.onnx)" in capsys.readouterr().out


def test_cli_bench_errors(capsys) -> None:
    assert main(["bench", "--model", "shufflenet_v2_x9_9"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", "shufflenet_v2_x0_5", "--batch-sizes", "1,zero"])
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", "shufflenet_v2_x0_5", "--backends", "tensorrt"])
    assert "tensorrt" in capsys.readouterr().err


def test_old_flat_module_names_still_work() -> None:
    """``shufflenet.bench`` was one module; its names are now the package's modules' objects."""
    from shufflenet.bench import machine, report, runner, timing

    assert bench.benchmark is runner.benchmark and bench.BenchResult is runner.BenchResult
    assert bench.time_interleaved is timing.time_interleaved and bench.Timing is timing.Timing
    assert bench.machine_info is machine.machine_info and bench.plot is report.plot
    assert bench.table_rows is report.table_rows and bench.TABLE_COLUMNS is report.TABLE_COLUMNS
